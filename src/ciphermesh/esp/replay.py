"""ESP anti-replay window with extended sequence numbers (RFC 4303 §3.4.3 and Appendix A)."""

from __future__ import annotations

_SUBSPACE = 1 << 32
_HIGH_BITS = 0xFFFFFFFF00000000
_M64 = 0xFFFFFFFFFFFFFFFF
# With the window off, ESN high bits still have to be guessed: take the 2^32 sequence numbers
# centred on the highest one seen (Appendix A2.2 with W = 2^31).
_ESN_GUESS_SPAN = 1 << 31
# Linux refuses ESN replay bitmaps longer than 128 32-bit words (xfrm_user.c, verify_replay), so a
# window that works here also works when the same SA is programmed into the kernel.
MAX_WINDOW = 4096


class ReplayWindow:
    """Highest authenticated sequence number T plus a bitmap of the `size` numbers ending at T.

    Bit i of the bitmap stands for T - i. `infer` runs before the ICV check and never changes
    state; `accept` runs after it, so forged packets cannot move the window.
    """

    __slots__ = ("_bitmap", "_esn", "_mask", "_size", "_span", "_top")

    def __init__(self, size: int = 1024, esn: bool = True) -> None:
        if not 0 <= size <= MAX_WINDOW:
            raise ValueError(f"replay window must be 0..{MAX_WINDOW} packets, got {size}")
        self._size = size
        self._esn = esn
        self._top = 0
        self._bitmap = 0
        self._mask = (1 << size) - 1
        self._span = size or _ESN_GUESS_SPAN

    @property
    def size(self) -> int:
        """Window size in packets; 0 means the replay check is off."""
        return self._size

    @property
    def esn(self) -> bool:
        """Whether sequence numbers are 64-bit with only the low 32 bits on the wire."""
        return self._esn

    @property
    def top(self) -> int:
        """Highest sequence number accepted so far (0 before the first packet)."""
        return self._top

    def infer(self, seq_lo: int) -> int | None:
        """The full sequence number for the 32 bits on the wire, or None if replayed or too old."""
        top = self._top
        if self._esn:
            # Appendix A2.2, cases A and B at once: take T's high bits, then move one 2^32 subspace
            # up or down so that the result lands in [bottom, bottom + 2^32).
            bottom = top - self._span + 1
            seq = (top & _HIGH_BITS) | seq_lo
            if seq < bottom:
                seq += _SUBSPACE
                if seq > _M64:
                    return None
            elif seq - _SUBSPACE >= bottom:
                seq -= _SUBSPACE
                if seq < 0:
                    return None
        else:
            seq = seq_lo
        size = self._size
        if seq > top or size == 0:
            return seq
        if seq == 0:
            # Senders start at 1 (RFC 4303 §3.3.3), so 0 can only be forged or replayed.
            return None
        diff = top - seq
        if diff >= size or (self._bitmap >> diff) & 1:
            return None
        return seq

    def accept(self, seq: int) -> None:
        """Record an authenticated sequence number, sliding the window forward if it is new."""
        top = self._top
        if seq > top:
            shift = seq - top
            self._bitmap = ((self._bitmap << shift) | 1) & self._mask if shift < self._size else 1
            self._top = seq
            return
        diff = top - seq
        if diff < self._size:
            self._bitmap |= 1 << diff

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self._size}, esn={self._esn}, top={self._top})"
