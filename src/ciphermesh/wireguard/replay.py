"""The transport counter filter: RFC 6479's ring of 64-bit words, as wireguard-go's replay package."""

from __future__ import annotations

from ciphermesh.wireguard.constants import REJECT_AFTER_MESSAGES

_WORD_BITS_LOG = 6
_WORD_BITS = 1 << _WORD_BITS_LOG
_BITS_TOTAL = 8192
RING_WORDS = _BITS_TOTAL // _WORD_BITS
WINDOW_SIZE = _BITS_TOTAL - _WORD_BITS  # 8128 counters behind the highest one seen


class ReplayFilter:
    """Accepts each counter at most once, and none more than WINDOW_SIZE behind the newest."""

    __slots__ = ("_last", "_ring")

    def __init__(self) -> None:
        self._last = 0
        self._ring = [0] * RING_WORDS

    def validate(self, counter: int, limit: int = REJECT_AFTER_MESSAGES) -> bool:
        """Record `counter` and return True if it is new, in the window and below `limit`."""
        if counter >= limit:
            return False
        word = counter >> _WORD_BITS_LOG
        ring = self._ring
        if counter > self._last:
            current = self._last >> _WORD_BITS_LOG
            if word != current:  # most counters stay in the newest word: nothing to clear
                for i in range(1, (word - current if word - current < RING_WORDS else RING_WORDS) + 1):
                    ring[(current + i) % RING_WORDS] = 0
            self._last = counter
        elif self._last - counter > WINDOW_SIZE:
            return False
        slot = word % RING_WORDS
        bit = 1 << (counter & (_WORD_BITS - 1))
        old = ring[slot]
        if old & bit:
            return False
        ring[slot] = old | bit
        return True
