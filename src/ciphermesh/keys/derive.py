"""Cilium's per-tunnel key derivation (the `+` keys), byte for byte."""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address, IPv6Address

from ciphermesh.keys.line import AeadKey, AuthEncKey, KeyLine, KeyLineError, KeyMaterial
from ciphermesh.keys.secret_bytes import SecretBytes

BOOT_ID_LEN = 36


def derive_tunnel_key(
    line: KeyLine,
    src: IPv4Address | IPv6Address,
    dst: IPv4Address | IPv6Address,
    src_boot_id: str,
    dst_boot_id: str,
) -> KeyLine:
    """The key of the SA carrying traffic from `src` to `dst` (outer addresses), derived from `line`."""
    context = (
        canonical_ip(src)
        + canonical_ip(dst)
        + _boot_id_bytes("src boot ID", src_boot_id)
        + _boot_id_bytes("dst boot ID", dst_boot_id)
    )
    return KeyLine(line.key_id, line.plus, _derive_material(line.material, context))


def canonical_ip(address: IPv4Address | IPv6Address) -> bytes:
    """4 bytes for IPv4 and v4-mapped IPv6 (as Go's To4), else 16: the form Cilium hashes."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.packed
    return address.packed


def _derive_material(material: KeyMaterial, context: bytes) -> KeyMaterial:
    if isinstance(material, AeadKey):
        return AeadKey(material.algo, _derive(material.key, context), material.icv_bits)
    return AuthEncKey(
        material.auth_algo,
        _derive(material.auth_key, context),
        material.enc_algo,
        _derive(material.enc_key, context),
    )


def _derive(key: SecretBytes, context: bytes) -> SecretBytes:
    global_key = key.reveal()
    # SHA-256 would be too short for keys over 32 bytes (Cilium issue #33457), hence SHA-512 there.
    digest = hashlib.sha256 if len(global_key) <= 32 else hashlib.sha512
    return SecretBytes(digest(global_key + context).digest()[: len(global_key)])


def _boot_id_bytes(field: str, boot_id: str) -> bytes:
    if not boot_id.isascii():
        raise KeyLineError(field, "must be ASCII (the text of /proc/sys/kernel/random/boot_id)")
    if len(boot_id) < BOOT_ID_LEN:
        raise KeyLineError(
            field, f"{len(boot_id)} characters; a boot ID must be at least {BOOT_ID_LEN} characters long"
        )
    return boot_id[:BOOT_ID_LEN].encode("ascii")
