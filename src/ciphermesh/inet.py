"""IPv4 and ICMP built by hand: the Internet checksum and an echo datagram, for probes, demos and benches."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_ICMP_ECHO = struct.Struct("!BBHHH")
ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
_PROTO_ICMP = 1
_TTL = 64
_DONT_FRAGMENT = 0x4000
MAX_DATAGRAM = 65535


def internet_checksum(data: bytes) -> int:
    """RFC 1071: the ones' complement of the ones' complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def with_checksum(header: bytes, offset: int) -> bytes:
    """`header` with the checksum of its bytes written at `offset` (where zeros stood)."""
    return header[:offset] + struct.pack("!H", internet_checksum(header)) + header[offset + 2 :]


def icmp_echo(
    src: IPv4Address,
    dst: IPv4Address,
    payload: bytes,
    *,
    ident: int,
    seq: int,
    ip_id: int,
    reply: bool = False,
    dont_fragment: bool = False,
) -> bytes:
    """An IPv4 ICMP echo request (or reply) datagram, both checksums filled in."""
    if len(payload) > MAX_DATAGRAM - IPV4_HEADER.size - _ICMP_ECHO.size:
        raise ValueError(f"ICMP payload of {len(payload)} bytes does not fit in one IPv4 datagram")
    kind = ICMP_ECHO_REPLY if reply else ICMP_ECHO_REQUEST
    icmp = with_checksum(_ICMP_ECHO.pack(kind, 0, 0, ident, seq) + payload, 2)
    flags = _DONT_FRAGMENT if dont_fragment else 0
    header = IPV4_HEADER.pack(
        0x45, 0, IPV4_HEADER.size + len(icmp), ip_id, flags, _TTL, _PROTO_ICMP, 0, src.packed, dst.packed
    )
    return with_checksum(header, 10) + icmp
