"""Handshake rate limiting under load: a token bucket per source address (20/s, burst 5), as wireguard-go."""

from __future__ import annotations

PACKETS_PER_SECOND = 20
PACKETS_BURSTABLE = 5
GARBAGE_COLLECT_TIME = 1.0
# Tokens are nanoseconds of credit, integers so the bucket arithmetic is exact.
_PACKET_COST = 1_000_000_000 // PACKETS_PER_SECOND
_MAX_TOKENS = _PACKET_COST * PACKETS_BURSTABLE


class RateLimiter:
    """allow(key, now) spends one packet's tokens for `key` (an address; IPv6 reduced to its /64)."""

    __slots__ = ("_last_gc", "_table")

    def __init__(self) -> None:
        self._table: dict[bytes, list[int]] = {}  # key -> [tokens, last time in ns]
        self._last_gc = float("-inf")

    def allow(self, key: bytes, now: float) -> bool:
        if now - self._last_gc > GARBAGE_COLLECT_TIME:
            self._collect(now)
        now_ns = int(now * 1e9)
        entry = self._table.get(key)
        if entry is None:
            self._table[key] = [_MAX_TOKENS - _PACKET_COST, now_ns]
            return True
        tokens = min(entry[0] + (now_ns - entry[1]), _MAX_TOKENS)
        entry[1] = now_ns
        if tokens > _PACKET_COST:
            entry[0] = tokens - _PACKET_COST
            return True
        entry[0] = tokens
        return False

    def _collect(self, now: float) -> None:
        horizon = int((now - GARBAGE_COLLECT_TIME) * 1e9)
        self._table = {k: v for k, v in self._table.items() if v[1] >= horizon}
        self._last_gc = now

    def __len__(self) -> int:
        return len(self._table)
