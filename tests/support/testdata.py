"""The vectors and captures in tests/testdata (their sources are in tests/testdata/README.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TESTDATA = Path(__file__).resolve().parents[1] / "testdata"


def load(name: str) -> Any:
    """One JSON file of tests/testdata."""
    return json.loads((TESTDATA / name).read_text())


def h(text: str) -> bytes:
    return bytes.fromhex(text)
