#!/usr/bin/env bash
# Runs a command in a fresh VM (a stock Debian kernel in QEMU, with ESP and WireGuard) with this checkout
# and its .venv visible read-only, e.g. `bash scripts/vm.sh -- ciphermesh lab up --control-plane etcd`.
# Options before `--` go to `ciphermesh lab vm` (--memory, --cpus, --timeout, --results); exit 77: no VM here.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/ciphermesh lab vm "$@"
