"""TAI64N timestamps as WireGuard's initiation carries them, whitened to about 16 ms."""

from __future__ import annotations

import math

TIMESTAMP_SIZE = 12
_BASE = 0x400000000000000A
# wireguard-go clears the low 24 bits of the nanoseconds so the timestamp does not leak a precise clock.
_WHITENER_MASK = 0x1000000 - 1


def stamp(unix_time: float) -> bytes:
    """The 12-byte TAI64N label for a wall-clock time in seconds since the epoch."""
    frac, whole = math.modf(unix_time)
    seconds = int(whole)
    nanos = int(frac * 1e9)
    if nanos < 0:
        seconds -= 1
        nanos += 1_000_000_000
    nanos &= ~_WHITENER_MASK & 0xFFFFFFFF
    return (_BASE + seconds).to_bytes(8, "big") + nanos.to_bytes(4, "big")


def after(t1: bytes, t2: bytes) -> bool:
    """True when t1 is strictly later than t2 (both big-endian, so bytes compare in order)."""
    return t1 > t2
