"""The algorithms a key line may name: those the ESP core implements, under the kernel's names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

GCM_SALT_LEN = 4


@dataclass(frozen=True)
class AeadAlgorithm:
    """An AEAD whose key material is the cipher key followed by a `salt_len`-byte salt."""

    name: str
    family: str
    material_lengths: tuple[int, ...]
    icv_bits: tuple[int, ...]
    salt_len: int


@dataclass(frozen=True)
class AuthAlgorithm:
    """An HMAC truncated to `icv_bits` (the kernel's default truncation for the name)."""

    name: str
    hash_name: str
    key_lengths: tuple[int, ...]
    icv_bits: int


@dataclass(frozen=True)
class EncAlgorithm:
    """A block cipher in CBC mode with an explicit IV of one block."""

    name: str
    key_lengths: tuple[int, ...]
    block_size: int


RFC4106_GCM_AES = "rfc4106(gcm(aes))"
HMAC_SHA256 = "hmac(sha256)"
HMAC_SHA512 = "hmac(sha512)"
HMAC_SHA1 = "hmac(sha1)"
CBC_AES = "cbc(aes)"

AEAD_ALGORITHMS: Mapping[str, AeadAlgorithm] = MappingProxyType(
    {
        RFC4106_GCM_AES: AeadAlgorithm(
            RFC4106_GCM_AES,
            family="GCM",
            material_lengths=(20, 28, 36),
            icv_bits=(64, 96, 128),
            salt_len=GCM_SALT_LEN,
        ),
    }
)

# Key lengths: RFC 4868/2404 sizes plus the shorter ones Cilium's CLI writes (16 bytes for
# hmac(sha256), 32 for hmac(sha512)), so every secret that CLI produced is accepted.
# ICVs: the truncation Linux gives a state whose XFRMA_ALG_AUTH_TRUNC length is 0, which is what
# Cilium's key lines get (measured in the 6.1 kernel). For hmac(sha256) that is 96 bits, from the
# pre-RFC draft-ietf-ipsec-ciph-sha-256-00; RFC 4868 would say 128, but a Cilium node sends and
# expects 12-byte ICVs, so that is what ours must be.
AUTH_ALGORITHMS: Mapping[str, AuthAlgorithm] = MappingProxyType(
    {
        HMAC_SHA256: AuthAlgorithm(HMAC_SHA256, hash_name="sha256", key_lengths=(16, 32), icv_bits=96),
        HMAC_SHA512: AuthAlgorithm(HMAC_SHA512, hash_name="sha512", key_lengths=(32, 64), icv_bits=256),
        HMAC_SHA1: AuthAlgorithm(HMAC_SHA1, hash_name="sha1", key_lengths=(20,), icv_bits=96),
    }
)

ENC_ALGORITHMS: Mapping[str, EncAlgorithm] = MappingProxyType(
    {
        CBC_AES: EncAlgorithm(CBC_AES, key_lengths=(16, 24, 32), block_size=16),
    }
)

# Names the kernel knows but that would send traffic unauthenticated or in clear text.
NULL_ALGORITHMS: frozenset[str] = frozenset({"digest_null", "cipher_null", "ecb(cipher_null)"})
