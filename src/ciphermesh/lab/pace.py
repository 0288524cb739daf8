"""How much slower this machine runs Python than the one the lab's waits were set on: those waits are
multiplied by it, so that under emulation (a VM under TCG runs Python 10 to 30 times slower) they still
hold, while here the factor is 1 and nothing changes."""

from __future__ import annotations

import os
import time
from functools import cache

PACE_ENV = "CIPHERMESH_PACE"
# The fastest of a few runs of `_workload` on the machine the waits were tuned on (2 shared cores).
REFERENCE_SECONDS = 0.004
_RUNS = 3


def _workload() -> float:
    start = time.perf_counter()
    total = 0
    for i in range(100_000):
        total += i * i
    return time.perf_counter() - start


def measure() -> float:
    """This machine's pace against the reference: the fastest of a few runs, so a busy moment counts less."""
    return min(_workload() for _ in range(_RUNS)) / REFERENCE_SECONDS


@cache
def factor() -> float:
    """`$CIPHERMESH_PACE` if set, else measured once per process; never below 1 (waits only grow)."""
    given = os.environ.get(PACE_ENV)
    if given:
        try:
            value = float(given)
        except ValueError:
            raise ValueError(f"${PACE_ENV}={given!r}: give a number, e.g. 1 or 20") from None
    else:
        value = measure()
    return max(1.0, value)


def scaled(seconds: float) -> float:
    """`seconds` of waiting on the reference machine, on this one."""
    return seconds * factor()
