"""Per-tunnel derivation: reference/cilium-ipsec.md §2.1 vectors and address canonicalisation."""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from ciphermesh.keys import AeadKey, AuthEncKey, KeyLineError, SecretBytes, derive_tunnel_key, parse_line

G = "44434241343332312423222114131211f4f3f2f1"
G256 = G + "44434241343332312423222114131211"
S, D = ip_address("10.0.0.1"), ip_address("10.0.0.2")
BOOT_S = "5f616d5f-b237-aed6-4ac7-123456789abc"
BOOT_D = "5f616d5f-aed6-4ac7-b237-987654321abc"


def derived_hex(
    line_text: str,
    src: IPv4Address | IPv6Address,
    dst: IPv4Address | IPv6Address,
    src_boot: str,
    dst_boot: str,
) -> str:
    material = derive_tunnel_key(parse_line(line_text), src, dst, src_boot, dst_boot).material
    assert isinstance(material, AeadKey)
    return material.key.reveal().hex()


def test_vector_sender_to_receiver() -> None:
    assert derived_hex(f"4+ rfc4106(gcm(aes)) {G} 128", S, D, BOOT_S, BOOT_D) == (
        "b35ff49a24fef81f1e829f461112b556fb89c95d"
    )


def test_vector_receiver_to_sender() -> None:
    assert derived_hex(f"4+ rfc4106(gcm(aes)) {G} 128", D, S, BOOT_D, BOOT_S) == (
        "459baa5975487e4bbff3f0e0f788f2769bf3ba09"
    )


def test_vector_36_byte_key_uses_sha512() -> None:
    assert derived_hex(f"5 rfc4106(gcm(aes)) {G256} 128", S, D, BOOT_S, BOOT_D) == (
        "0f75924d1aa59966a097da81c275cb9c0dba73fe1ab73c379d10cf2b7db83b1704835874"
    )


def test_id_algorithm_and_icv_are_kept() -> None:
    line = parse_line(f"7+ rfc4106(gcm(aes)) {G} 96")
    derived = derive_tunnel_key(line, S, D, BOOT_S, BOOT_D)
    assert (derived.key_id, derived.plus) == (7, True)
    assert isinstance(derived.material, AeadKey)
    assert (derived.material.algo, derived.material.icv_bits) == ("rfc4106(gcm(aes))", 96)
    assert derived.material != line.material


def test_v4_mapped_ipv6_hashes_as_ipv4() -> None:
    mapped_s, mapped_d = ip_address("::ffff:10.0.0.1"), ip_address("::ffff:10.0.0.2")
    line = f"4+ rfc4106(gcm(aes)) {G} 128"
    assert derived_hex(line, mapped_s, D, BOOT_S, BOOT_D) == "b35ff49a24fef81f1e829f461112b556fb89c95d"
    assert derived_hex(line, mapped_s, mapped_d, BOOT_S, BOOT_D) == "b35ff49a24fef81f1e829f461112b556fb89c95d"


def test_ipv6_hashes_16_bytes_per_address() -> None:
    src, dst = ip_address("fd00::1"), ip_address("fd00::2")
    expected = hashlib.sha256(
        bytes.fromhex(G) + src.packed + dst.packed + BOOT_S.encode() + BOOT_D.encode()
    ).digest()[:20]
    assert len(src.packed) == 16
    assert derived_hex(f"4+ rfc4106(gcm(aes)) {G} 128", src, dst, BOOT_S, BOOT_D) == expected.hex()


def test_auth_and_enc_keys_are_derived_independently() -> None:
    a, e = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
    derived = derive_tunnel_key(parse_line(f"3+ hmac(sha256) {a} cbc(aes) {e}"), S, D, BOOT_S, BOOT_D)
    context = S.packed + D.packed + BOOT_S.encode() + BOOT_D.encode()
    assert derived.material == AuthEncKey(
        "hmac(sha256)",
        derive_reference(a, context),
        "cbc(aes)",
        derive_reference(e, context),
    )


def derive_reference(key_hex: str, context: bytes) -> SecretBytes:
    return SecretBytes(hashlib.sha256(bytes.fromhex(key_hex) + context).digest()[:16])


def test_only_the_first_36_characters_of_a_boot_id_count() -> None:
    line = f"4+ rfc4106(gcm(aes)) {G} 128"
    assert derived_hex(line, S, D, BOOT_S + "\n-extra", BOOT_D + "zzz") == (
        "b35ff49a24fef81f1e829f461112b556fb89c95d"
    )


@pytest.mark.parametrize(
    ("src_boot", "dst_boot", "field", "reason"),
    [
        (BOOT_S[:35], BOOT_D, "src boot ID", "35 characters; a boot ID must be at least 36"),
        (BOOT_S, "", "dst boot ID", "0 characters"),
        (BOOT_S, "\u00e9" + BOOT_D, "dst boot ID", "must be ASCII"),
    ],
)
def test_bad_boot_id_is_rejected(src_boot: str, dst_boot: str, field: str, reason: str) -> None:
    with pytest.raises(KeyLineError) as caught:
        derive_tunnel_key(parse_line(f"4+ rfc4106(gcm(aes)) {G} 128"), S, D, src_boot, dst_boot)
    assert caught.value.field == field
    assert reason in caught.value.reason
