#!/usr/bin/env bash
# The test suite: lint, types, then every test (unit, property, fuzz, interop, namespace labs).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check src tests benchmarks
.venv/bin/mypy
.venv/bin/pytest "$@"
