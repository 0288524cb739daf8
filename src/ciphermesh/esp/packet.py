"""Outer IPv4/IPv6 headers of tunnel-mode ESP (IP protocol 50): build and parse, nothing more."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

PROTO_ESP = 50
_IPV4_MIN_HEADER = 20
_IPV6_HEADER = 40
_MAX_TOTAL = 0xFFFF
_FRAGMENT_BITS = 0x3FFF  # MF flag and fragment offset

_ipv4 = struct.Struct("!BBHHHBBH4s4s")
_ipv4_words = struct.Struct("!10H")
_ipv6 = struct.Struct("!IHBB16s16s")
_pack_u16 = struct.Struct("!H").pack
_unpack_u16 = struct.Struct("!H").unpack_from


def _address_bytes(address: IPv4Address | IPv6Address | bytes, length: int) -> bytes:
    packed = address if isinstance(address, bytes) else address.packed
    if len(packed) != length:
        raise ValueError(f"expected an IPv{4 if length == 4 else 6} address, got {len(packed)} bytes")
    return packed


def _checksum(header: bytes) -> int:
    total: int = sum(_ipv4_words.unpack(header))
    total = (total & 0xFFFF) + (total >> 16)
    total += total >> 16
    return ~total & 0xFFFF


def wrap_ipv4(
    src: IPv4Address | bytes, dst: IPv4Address | bytes, esp: bytes, ttl: int = 64, ident: int = 0
) -> bytes:
    """IPv4 header (no options, checksum filled in) ‖ esp; addresses as objects or 4 packed bytes."""
    total = _IPV4_MIN_HEADER + len(esp)
    if total > _MAX_TOTAL:
        raise ValueError(f"ESP packet of {len(esp)} bytes does not fit in one IPv4 packet")
    header = _ipv4.pack(
        0x45, 0, total, ident, 0, ttl, PROTO_ESP, 0, _address_bytes(src, 4), _address_bytes(dst, 4)
    )
    return header[:10] + _pack_u16(_checksum(header)) + header[12:] + esp


def wrap_ipv6(
    src: IPv6Address | bytes,
    dst: IPv6Address | bytes,
    esp: bytes,
    hop_limit: int = 64,
    flow_label: int = 0,
) -> bytes:
    """IPv6 header (no extension headers) ‖ esp; addresses as objects or 16 packed bytes."""
    if len(esp) > _MAX_TOTAL:
        raise ValueError(f"ESP packet of {len(esp)} bytes needs a jumbogram, which is not supported")
    if not 0 <= flow_label <= 0xFFFFF:
        raise ValueError(f"flow label must fit in 20 bits, got {flow_label}")
    header = _ipv6.pack(
        (6 << 28) | flow_label,
        len(esp),
        PROTO_ESP,
        hop_limit,
        _address_bytes(src, 16),
        _address_bytes(dst, 16),
    )
    return header + esp


def parse_outer(packet: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(src, dst, ESP bytes) of an unfragmented IPv4/IPv6 ESP packet, addresses packed; else None.

    Packed addresses are what `SADatabase.decapsulate` takes directly. Bytes after the IP length
    (link-layer padding) are cut off. IPv6 extension headers are not walked.
    """
    size = len(packet)
    if size < _IPV4_MIN_HEADER:
        return None
    version = packet[0] >> 4
    if version == 4:
        header_len = (packet[0] & 0x0F) * 4
        total = _unpack_u16(packet, 2)[0]
        if (
            header_len < _IPV4_MIN_HEADER
            or not header_len <= total <= size
            or packet[9] != PROTO_ESP
            or _unpack_u16(packet, 6)[0] & _FRAGMENT_BITS
        ):
            return None
        return packet[12:16], packet[16:20], packet[header_len:total]
    if version == 6 and size >= _IPV6_HEADER:
        end = _IPV6_HEADER + _unpack_u16(packet, 4)[0]
        if packet[6] != PROTO_ESP or end > size:
            return None
        return packet[8:24], packet[24:40], packet[_IPV6_HEADER:end]
    return None
