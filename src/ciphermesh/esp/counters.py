"""Why ESP packets were dropped, under the Linux XFRM counter names, and packet/byte totals."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum


class Drop(StrEnum):
    """A drop reason; its value is the counter it is counted under (Linux's name where one exists)."""

    XfrmInHdrError = "XfrmInHdrError"
    """Truncated or malformed ESP header, or a ciphertext that cannot be the cipher's output."""
    XfrmInNoStates = "XfrmInNoStates"
    """No inbound SA for (outer source, outer destination, SPI)."""
    XfrmInStateProtoError = "XfrmInStateProtoError"
    """The ICV did not verify (wrong key, corrupted or forged packet, ESN high bits out of sync)."""
    XfrmInStateSeqError = "XfrmInStateSeqError"
    """Replayed sequence number, or one too old for the anti-replay window."""
    XfrmInStateExpired = "XfrmInStateExpired"
    """The inbound SA was expired (its key was retired)."""
    XfrmInStateModeError = "XfrmInStateModeError"
    """Tunnel mode: next header not 4/41, or the inner packet is not the IPv4/IPv6 packet it claims."""
    EspInBadPadding = "EspInBadPadding"
    """Authentic packet whose pad length or padding bytes (1, 2, 3, ...) are wrong (RFC 4303 §2.4)."""
    EspInDummyPacket = "EspInDummyPacket"
    """Traffic-flow-confidentiality dummy packet (next header 59), discarded as RFC 4303 §2.6 requires."""
    XfrmOutStateSeqError = "XfrmOutStateSeqError"
    """Outbound sequence number exhausted: the SA needs a new key."""
    XfrmOutStateModeError = "XfrmOutStateModeError"
    """Outbound packet that is not IPv4/IPv6, so tunnel mode has no next header for it."""


class Counters(Mapping[str, int]):
    """Drops per counter name (every name present, 0 included) plus packets/bytes in and out."""

    __slots__ = ("_drops", "bytes_in", "bytes_out", "packets_in", "packets_out")

    def __init__(self) -> None:
        self._drops: dict[str, int] = dict.fromkeys(Drop, 0)
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0

    def count(self, reason: Drop) -> Drop:
        """Count one drop and return its reason, so a drop site can `return counters.count(...)`."""
        self._drops[reason] += 1
        return reason

    @property
    def dropped(self) -> int:
        """All drops, whatever the reason."""
        return sum(self._drops.values())

    def add(self, other: Counters) -> None:
        """Add another set of counters to this one (for totals over many SAs)."""
        for name, value in other._drops.items():
            self._drops[name] += value
        self.packets_in += other.packets_in
        self.bytes_in += other.bytes_in
        self.packets_out += other.packets_out
        self.bytes_out += other.bytes_out

    @classmethod
    def total(cls, parts: Iterable[Counters]) -> Counters:
        """A new Counters holding the sum of `parts`."""
        result = cls()
        for part in parts:
            result.add(part)
        return result

    def as_dict(self) -> dict[str, int]:
        """Plain dict: every drop counter by name, then packets_in, bytes_in, packets_out, bytes_out."""
        result = {str(name): value for name, value in self._drops.items()}
        result.update(
            packets_in=self.packets_in,
            bytes_in=self.bytes_in,
            packets_out=self.packets_out,
            bytes_out=self.bytes_out,
        )
        return result

    def __getitem__(self, name: str) -> int:
        return self._drops[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._drops)

    def __len__(self) -> int:
        return len(self._drops)

    def __repr__(self) -> str:
        nonzero = ", ".join(f"{name}={value}" for name, value in self._drops.items() if value)
        return (
            f"Counters(packets_in={self.packets_in}, bytes_in={self.bytes_in}, "
            f"packets_out={self.packets_out}, bytes_out={self.bytes_out}, drops={{{nonzero}}})"
        )
