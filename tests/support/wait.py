"""The one way tests wait: poll a condition against a deadline (never a fixed sleep as the check)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], timeout: float = 5.0, message: str = "the condition", *,
    interval: float = 0.1, detail: Callable[[], object] | None = None,
) -> T:
    """The first truthy value of `condition()`; fails naming `message` (and `detail()`) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; last seen: {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message}{seen}")
        time.sleep(interval)
