"""Classic pcap files as bytes: build one from timestamped packets, parse one back (no file I/O)."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # the packet starts with an IPv4 or IPv6 header

DEFAULT_SNAPLEN = 262144
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD

_MAGIC_USEC = 0xA1B2C3D4
_MAGIC_NSEC = 0xA1B23C4D
_GLOBAL_HEADER = struct.Struct("<IHHiIII")
_RECORD_HEADER = struct.Struct("<IIII")
_ETHERNET_HEADER = struct.Struct("!6s6sH")
_U32_MAX = 0xFFFFFFFF


class PcapError(ValueError):
    """The bytes are not a classic pcap file this module can read, or a record cannot be written."""


@dataclass(frozen=True)
class PcapRecord:
    """One captured packet: timestamp in nanoseconds since the epoch, captured bytes, original length."""

    timestamp_ns: int
    data: bytes
    orig_len: int


@dataclass(frozen=True)
class PcapFile:
    """A parsed capture: link type, snapshot length and the records in file order."""

    linktype: int
    snaplen: int
    nanosecond: bool
    records: tuple[PcapRecord, ...]


def build_pcap(
    packets: Iterable[tuple[int, bytes]],
    *,
    linktype: int = LINKTYPE_RAW,
    snaplen: int = DEFAULT_SNAPLEN,
    nanosecond: bool = False,
) -> bytes:
    """Return a little-endian classic pcap holding `(timestamp_ns, packet)` pairs, truncated to snaplen."""
    if not 0 < snaplen <= _U32_MAX:
        raise PcapError(f"snaplen must be 1..{_U32_MAX}, got {snaplen}")
    if not 0 <= linktype <= _U32_MAX:
        raise PcapError(f"link type must be 0..{_U32_MAX}, got {linktype}")
    magic = _MAGIC_NSEC if nanosecond else _MAGIC_USEC
    fraction_per_second = 1_000_000_000 if nanosecond else 1_000_000
    parts = [_GLOBAL_HEADER.pack(magic, 2, 4, 0, 0, snaplen, linktype)]
    for timestamp_ns, packet in packets:
        if timestamp_ns < 0:
            raise PcapError(f"timestamp must not be negative, got {timestamp_ns}")
        seconds, remainder_ns = divmod(timestamp_ns, 1_000_000_000)
        if seconds > _U32_MAX:
            raise PcapError(f"timestamp {timestamp_ns} ns does not fit a 32-bit seconds field")
        if len(packet) > _U32_MAX:
            raise PcapError(f"packet of {len(packet)} bytes is too large for a pcap record")
        fraction = remainder_ns * fraction_per_second // 1_000_000_000
        captured = packet[:snaplen]
        parts.append(_RECORD_HEADER.pack(seconds, fraction, len(captured), len(packet)))
        parts.append(captured)
    return b"".join(parts)


def parse_pcap(data: bytes) -> PcapFile:
    """Parse a classic pcap (either byte order, micro- or nanosecond timestamps); PcapError if malformed."""
    if len(data) < _GLOBAL_HEADER.size:
        raise PcapError(f"file of {len(data)} bytes is shorter than the 24-byte pcap header")
    order = _byte_order(data[:4])
    global_header = struct.Struct(order + _GLOBAL_HEADER.format[1:])
    record_header = struct.Struct(order + _RECORD_HEADER.format[1:])
    magic, major, _minor, _zone, _sigfigs, snaplen, linktype = global_header.unpack_from(data)
    if major != 2:
        raise PcapError(f"unsupported pcap major version {major}")
    nanosecond = magic == _MAGIC_NSEC
    fraction_ns = 1 if nanosecond else 1000
    records = []
    offset = global_header.size
    while offset < len(data):
        if len(data) - offset < record_header.size:
            raise PcapError(f"truncated record header at offset {offset}")
        seconds, fraction, incl_len, orig_len = record_header.unpack_from(data, offset)
        offset += record_header.size
        if incl_len > len(data) - offset:
            raise PcapError(
                f"record at offset {offset - record_header.size} claims {incl_len} bytes, "
                f"only {len(data) - offset} left"
            )
        packet = data[offset : offset + incl_len]
        offset += incl_len
        records.append(PcapRecord(seconds * 1_000_000_000 + fraction * fraction_ns, packet, orig_len))
    # The upper 16 bits of the field may carry FCS information; the link type is the lower 16.
    return PcapFile(linktype & 0xFFFF, snaplen, nanosecond, tuple(records))


def ethernet_frame(
    packet: bytes, *, src_mac: bytes = b"\x02" + bytes(5), dst_mac: bytes = b"\x02" + bytes(4) + b"\x01"
) -> bytes:
    """Wrap an IPv4 or IPv6 packet in an Ethernet II header, the EtherType taken from the version nibble."""
    if len(src_mac) != 6 or len(dst_mac) != 6:
        raise PcapError("MAC addresses must be 6 bytes")
    version = packet[0] >> 4 if packet else 0
    if version == 4:
        ethertype = ETHERTYPE_IPV4
    elif version == 6:
        ethertype = ETHERTYPE_IPV6
    else:
        raise PcapError(f"packet is neither IPv4 nor IPv6 (version nibble {version})")
    return _ETHERNET_HEADER.pack(dst_mac, src_mac, ethertype) + packet


def strip_ethernet(frame: bytes) -> bytes | None:
    """The IP packet inside an Ethernet II frame, or None if the frame carries neither IPv4 nor IPv6."""
    if len(frame) < _ETHERNET_HEADER.size:
        return None
    _dst, _src, ethertype = _ETHERNET_HEADER.unpack_from(frame)
    if ethertype not in (ETHERTYPE_IPV4, ETHERTYPE_IPV6):
        return None
    return frame[_ETHERNET_HEADER.size :]


def _byte_order(magic_bytes: bytes) -> str:
    for order in ("<", ">"):
        (magic,) = struct.unpack(order + "I", magic_bytes)
        if magic in (_MAGIC_USEC, _MAGIC_NSEC):
            return order
    raise PcapError(f"not a classic pcap file (magic {magic_bytes.hex()})")
