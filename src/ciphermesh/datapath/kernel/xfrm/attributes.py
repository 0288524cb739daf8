"""Netlink attributes (struct rtattr / nlattr): 4-byte aligned type-length-value records."""

from __future__ import annotations

import struct
from collections.abc import Iterator

from ciphermesh.datapath.kernel.xfrm.errors import XfrmDecodeError

ALIGNTO = 4
_HEADER = struct.Struct("=HH")
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF


def align(length: int) -> int:
    return (length + ALIGNTO - 1) & ~(ALIGNTO - 1)


def attribute(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to the next 4-byte boundary."""
    length = _HEADER.size + len(payload)
    if length > 0xFFFF:
        raise ValueError(f"attribute {kind} of {len(payload)} bytes does not fit a netlink attribute")
    return _HEADER.pack(length, kind) + payload + bytes(align(length) - length)


def nested(kind: int, children: list[bytes]) -> bytes:
    """An attribute holding attributes, flagged NLA_F_NESTED."""
    return attribute(kind | NLA_F_NESTED, b"".join(children))


def u32(kind: int, value: int) -> bytes:
    return attribute(kind, struct.pack("=I", value))


def iterate(buffer: bytes | memoryview, what: str) -> Iterator[tuple[int, memoryview]]:
    """(type without flags, payload) for each attribute; the last one's padding may be missing."""
    view = memoryview(buffer)
    offset = 0
    while offset < len(view):
        if len(view) - offset < _HEADER.size:
            raise XfrmDecodeError(f"{what}: {len(view) - offset} bytes left where an attribute header is due")
        length, kind = _HEADER.unpack_from(view, offset)
        if length < _HEADER.size or offset + length > len(view):
            raise XfrmDecodeError(
                f"{what}: attribute {kind & NLA_TYPE_MASK} at offset {offset} claims {length} bytes, "
                f"{len(view) - offset} left"
            )
        yield kind & NLA_TYPE_MASK, view[offset + _HEADER.size : offset + length]
        offset += align(length)


def collect(buffer: bytes | memoryview, what: str) -> dict[int, list[memoryview]]:
    """Every attribute by type, in order (XFRMA_TMPL, say, may repeat)."""
    found: dict[int, list[memoryview]] = {}
    for kind, payload in iterate(buffer, what):
        found.setdefault(kind, []).append(payload)
    return found


def read_u32(payload: memoryview, what: str) -> int:
    if len(payload) < 4:
        raise XfrmDecodeError(f"{what}: {len(payload)} bytes where a u32 is due")
    value: int = struct.unpack_from("=I", payload)[0]
    return value
