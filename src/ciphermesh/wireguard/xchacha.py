"""XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha): a pure-Python HChaCha20 in front of `cryptography`.

Only cookie replies use it, a few per second at most under load, so a pure-Python HChaCha20 is enough.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

_MASK = 0xFFFFFFFF
_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
XNONCE_SIZE = 24


def _rotl(v: int, c: int) -> int:
    return ((v << c) & _MASK) | (v >> (32 - c))


def _quarter_round(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & _MASK
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & _MASK
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & _MASK
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & _MASK
    s[b] = _rotl(s[b] ^ s[c], 7)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20(key, 16-byte nonce): the 20-round ChaCha core without feed-forward, words 0-3 and 12-15."""
    if len(key) != 32 or len(nonce16) != 16:
        raise ValueError("HChaCha20 needs a 32-byte key and a 16-byte nonce")
    state = [*_SIGMA, *struct.unpack("<8I", key), *struct.unpack("<4I", nonce16)]
    for _ in range(10):
        _quarter_round(state, 0, 4, 8, 12)
        _quarter_round(state, 1, 5, 9, 13)
        _quarter_round(state, 2, 6, 10, 14)
        _quarter_round(state, 3, 7, 11, 15)
        _quarter_round(state, 0, 5, 10, 15)
        _quarter_round(state, 1, 6, 11, 12)
        _quarter_round(state, 2, 7, 8, 13)
        _quarter_round(state, 3, 4, 9, 14)
    return struct.pack("<8I", *state[0:4], *state[12:16])


def _subkey_and_nonce(key: bytes, nonce: bytes) -> tuple[bytes, bytes]:
    if len(nonce) != XNONCE_SIZE:
        raise ValueError("XChaCha20-Poly1305 needs a 24-byte nonce")
    return hchacha20(key, nonce[:16]), b"\x00\x00\x00\x00" + nonce[16:]


def xchacha20poly1305_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    subkey, inner_nonce = _subkey_and_nonce(key, nonce)
    return ChaCha20Poly1305(subkey).encrypt(inner_nonce, plaintext, ad)


def xchacha20poly1305_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes | None:
    """Authenticated decryption; None when the tag does not verify."""
    subkey, inner_nonce = _subkey_and_nonce(key, nonce)
    try:
        return ChaCha20Poly1305(subkey).decrypt(inner_nonce, ciphertext, ad)
    except InvalidTag:
        return None
