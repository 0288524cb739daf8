"""A key line in words, without its key material: what `key validate` and the ESP demo print."""

from __future__ import annotations

from ciphermesh.keys.algorithms import AEAD_ALGORITHMS, AUTH_ALGORITHMS
from ciphermesh.keys.line import AeadKey, KeyLine


def describe_line(line: KeyLine) -> str:
    """A one-line summary without key material, e.g. `key ID 3, rfc4106(gcm(aes)) AES-128, ICV 128 bits`."""
    m = line.material
    if isinstance(m, AeadKey):
        aes_bits = (len(m.key) - AEAD_ALGORITHMS[m.algo].salt_len) * 8
        return f"key ID {line.key_id}, {m.algo} AES-{aes_bits}, ICV {m.icv_bits} bits"
    icv_bits = AUTH_ALGORITHMS[m.auth_algo].icv_bits
    return (
        f"key ID {line.key_id}, {m.auth_algo} ({len(m.auth_key)}-byte key) with {m.enc_algo} "
        f"AES-{len(m.enc_key) * 8}, ICV {icv_bits} bits"
    )
