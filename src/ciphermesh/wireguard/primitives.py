"""WireGuard's primitives: BLAKE2s HASH/MAC, HMAC-BLAKE2s KDF, X25519 DH, ChaCha20-Poly1305 AEAD."""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

KEY_SIZE = 32
HASH_SIZE = 32
MAC_SIZE = 16


class DhError(ValueError):
    """X25519 produced the all-zero shared secret (a low-order public key)."""


def hash_(*parts: bytes) -> bytes:
    """HASH(a || b || ...): unkeyed BLAKE2s-256."""
    h = hashlib.blake2s()
    for part in parts:
        h.update(part)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC(key, data): keyed BLAKE2s with a 128-bit output."""
    return hashlib.blake2s(data, key=key, digest_size=MAC_SIZE).digest()


def hmac_blake2s(key: bytes, data: bytes) -> bytes:
    """HMAC(key, data) over BLAKE2s-256, the KDF's building block."""
    return hmac.digest(key, data, "blake2s")


def kdf(count: int, key: bytes, data: bytes) -> tuple[bytes, ...]:
    """KDF_n(key, data): HKDF with HMAC-BLAKE2s, returning `count` 32-byte outputs."""
    prk = hmac_blake2s(key, data)
    out: list[bytes] = []
    previous = b""
    for i in range(1, count + 1):
        previous = hmac_blake2s(prk, previous + bytes([i]))
        out.append(previous)
    return tuple(out)


def kdf1(key: bytes, data: bytes) -> bytes:
    return kdf(1, key, data)[0]


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    a, b = kdf(2, key, data)
    return a, b


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    a, b, c = kdf(3, key, data)
    return a, b, c


def dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """DH(private, public); raises DhError for a malformed or low-order public key."""
    if len(public) != KEY_SIZE:
        raise DhError("public key must be 32 bytes")
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise DhError("X25519 produced an all-zero shared secret") from exc


def aead_nonce(counter: int) -> bytes:
    """The 96-bit ChaCha20-Poly1305 nonce: 32 zero bits, then the counter little-endian."""
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(aead_nonce(counter), plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes | None:
    """Authenticated decryption; None when the tag does not verify."""
    try:
        return ChaCha20Poly1305(key).decrypt(aead_nonce(counter), ciphertext, ad)
    except InvalidTag:
        return None
