"""New key lines, with the shapes `cilium encryption create-key` writes, and the next key ID."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from ciphermesh.keys.algorithms import CBC_AES, HMAC_SHA256, HMAC_SHA512, RFC4106_GCM_AES
from ciphermesh.keys.line import MAX_KEY_ID, MIN_KEY_ID, AeadKey, AuthEncKey, KeyLine, KeyMaterial
from ciphermesh.keys.secret_bytes import SecretBytes

ALGO_CHOICES = ("rfc4106-gcm-aes", "rfc4106-gcm-aes256", "cbc-aes-sha256", "cbc-aes-sha512")

RandBytes = Callable[[int], bytes]


def generate_line(
    algo: str = "rfc4106-gcm-aes", key_id: int = 3, randbytes: RandBytes = secrets.token_bytes
) -> KeyLine:
    """A fresh `<key_id>+` line for `algo` (one of ALGO_CHOICES), keys drawn from `randbytes`."""
    return KeyLine(key_id, True, _material(algo, lambda n: _draw(randbytes, n)))


def next_key_id(key_id: int) -> int:
    """The ID a rotation moves to: one more, with 15 wrapping to 1."""
    if not MIN_KEY_ID <= key_id <= MAX_KEY_ID:
        raise ValueError(f"key ID {key_id} is out of range; it must be {MIN_KEY_ID}..{MAX_KEY_ID}")
    return key_id % MAX_KEY_ID + 1


def _material(algo: str, draw: Callable[[int], SecretBytes]) -> KeyMaterial:
    # Sizes follow Cilium's CLI (16-byte hmac(sha256), 32-byte hmac(sha512) keys) except the AES-256
    # choice, which Cilium's CLI lacks.
    if algo == "rfc4106-gcm-aes":
        return AeadKey(RFC4106_GCM_AES, draw(20), 128)
    if algo == "rfc4106-gcm-aes256":
        return AeadKey(RFC4106_GCM_AES, draw(36), 128)
    if algo == "cbc-aes-sha256":
        return AuthEncKey(HMAC_SHA256, draw(16), CBC_AES, draw(16))
    if algo == "cbc-aes-sha512":
        return AuthEncKey(HMAC_SHA512, draw(32), CBC_AES, draw(16))
    raise ValueError(f"unknown algorithm {algo!r}; choose one of {', '.join(ALGO_CHOICES)}")


def _draw(randbytes: RandBytes, size: int) -> SecretBytes:
    value = randbytes(size)
    if len(value) != size:
        raise ValueError(f"the random source returned {len(value)} bytes instead of {size}")
    return SecretBytes(value)


def successor_line(current: KeyLine, randbytes: RandBytes = secrets.token_bytes) -> KeyLine:
    """The line a rotation writes: the next key ID, fresh keys of the same algorithms and sizes, `+` kept."""
    material = current.material
    if isinstance(material, AeadKey):
        fresh: KeyMaterial = AeadKey(material.algo, _draw(randbytes, len(material.key)), material.icv_bits)
    else:
        fresh = AuthEncKey(
            material.auth_algo,
            _draw(randbytes, len(material.auth_key)),
            material.enc_algo,
            _draw(randbytes, len(material.enc_key)),
        )
    return KeyLine(next_key_id(current.key_id), current.plus, fresh)
