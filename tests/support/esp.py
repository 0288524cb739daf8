"""Shared by the ESP core tests: SA pairs for every transform, inner packets."""

from __future__ import annotations

import random
from collections.abc import Callable

from ciphermesh.esp import AesGcmCipher, CbcHmacCipher, EspCipher, InboundSA, OutboundSA

# name -> (cipher factory from a seeded key source)
TRANSFORMS: dict[str, Callable[[Callable[[int], bytes]], EspCipher]] = {
    "gcm128": lambda key: AesGcmCipher(key(20)),
    "gcm256": lambda key: AesGcmCipher(key(36)),
    "gcm128-icv8": lambda key: AesGcmCipher(key(20), 8),
    "cbc-sha256": lambda key: CbcHmacCipher(key(16), key(32), "sha256", 12),
    "cbc-sha512": lambda key: CbcHmacCipher(key(32), key(64), "sha512", 32),
    "cbc-sha1": lambda key: CbcHmacCipher(key(16), key(20), "sha1", 12),
}


def sa_pair(
    transform: str, *, esn: bool = True, spi: int = 3, seed: int = 1, first_seq: int = 1
) -> tuple[OutboundSA, InboundSA]:
    """An outbound SA and the inbound SA of the same key (each with its own cipher object)."""
    outbound = OutboundSA(
        spi,
        TRANSFORMS[transform](random.Random(seed).randbytes),
        esn=esn,
        first_seq=first_seq,
        randbytes=random.Random(seed + 1).randbytes,
    )
    inbound = InboundSA(spi, TRANSFORMS[transform](random.Random(seed).randbytes), esn=esn)
    return outbound, inbound


def ipv4_packet(payload: bytes) -> bytes:
    """A plausible IPv4 header (version 4, IHL 5) followed by payload; only the nibble matters here."""
    return bytes([0x45, 0]) + (20 + len(payload)).to_bytes(2, "big") + bytes(16) + payload


def ipv6_packet(payload: bytes) -> bytes:
    return bytes([0x60, 0, 0, 0]) + len(payload).to_bytes(2, "big") + bytes([17, 64]) + bytes(32) + payload
