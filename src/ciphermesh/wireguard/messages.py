"""Wire formats of the four WireGuard messages (little-endian header fields)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ciphermesh.wireguard.constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    RESPONSE_SIZE,
)

# Type is one byte followed by three reserved zero bytes: read as a little-endian u32 as wireguard-go does.
_INITIATION = struct.Struct("<II108s16s16s")
_RESPONSE = struct.Struct("<III48s16s16s")
_COOKIE_REPLY = struct.Struct("<II24s32s")
MAC1_OFFSET_FROM_END = 32
MAC2_OFFSET_FROM_END = 16


def message_type(datagram: bytes) -> int:
    """The 32-bit type field; reserved bytes that are not zero make it an unknown type."""
    return int.from_bytes(datagram[0:4], "little")


@dataclass(frozen=True, slots=True)
class Initiation:
    sender: int
    body: bytes  # unencrypted ephemeral (32) || encrypted static (48) || encrypted timestamp (28)
    mac1: bytes
    mac2: bytes


@dataclass(frozen=True, slots=True)
class Response:
    sender: int
    receiver: int
    body: bytes  # unencrypted ephemeral (32) || encrypted nothing (16)
    mac1: bytes
    mac2: bytes


@dataclass(frozen=True, slots=True)
class CookieReply:
    receiver: int
    nonce: bytes
    encrypted_cookie: bytes


def parse_initiation(datagram: bytes) -> Initiation | None:
    if len(datagram) != INITIATION_SIZE:
        return None
    kind, sender, body, mac1, mac2 = _INITIATION.unpack(datagram)
    if kind != MESSAGE_INITIATION:
        return None
    return Initiation(sender, body, mac1, mac2)


def parse_response(datagram: bytes) -> Response | None:
    if len(datagram) != RESPONSE_SIZE:
        return None
    kind, sender, receiver, body, mac1, mac2 = _RESPONSE.unpack(datagram)
    if kind != MESSAGE_RESPONSE:
        return None
    return Response(sender, receiver, body, mac1, mac2)


def parse_cookie_reply(datagram: bytes) -> CookieReply | None:
    if len(datagram) != COOKIE_REPLY_SIZE:
        return None
    kind, receiver, nonce, cookie = _COOKIE_REPLY.unpack(datagram)
    if kind != MESSAGE_COOKIE_REPLY:
        return None
    return CookieReply(receiver, nonce, cookie)


def pack_initiation_unmacked(sender: int, body: bytes) -> bytearray:
    """An initiation with zeroed MAC fields, to be filled by the cookie generator."""
    return bytearray(_INITIATION.pack(MESSAGE_INITIATION, sender, body, bytes(16), bytes(16)))


def pack_response_unmacked(sender: int, receiver: int, body: bytes) -> bytearray:
    return bytearray(_RESPONSE.pack(MESSAGE_RESPONSE, sender, receiver, body, bytes(16), bytes(16)))


def pack_cookie_reply(receiver: int, nonce: bytes, encrypted_cookie: bytes) -> bytes:
    return _COOKIE_REPLY.pack(MESSAGE_COOKIE_REPLY, receiver, nonce, encrypted_cookie)


def transport_prefix(receiver: int) -> bytes:
    """The first 8 bytes of every transport message to a keypair: type 4 and the receiver index."""
    return struct.pack("<II", MESSAGE_TRANSPORT, receiver)
