"""Wireshark/tshark `uat:esp_sa` records, so captures of our ESP can be decrypted independently."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address
from types import MappingProxyType

from ciphermesh.keys.algorithms import CBC_AES, HMAC_SHA1, HMAC_SHA256, HMAC_SHA512
from ciphermesh.keys.derive import canonical_ip
from ciphermesh.keys.line import AeadKey, KeyLine
from ciphermesh.keys.secret_bytes import SecretBytes

# The exact option strings of tshark 4.0's ESP dissector; it rejects any other spelling.
GCM_NAMES: Mapping[int, str] = MappingProxyType(
    {bits: f"AES-GCM with {bits // 8} octet ICV [RFC4106]" for bits in (64, 96, 128)}
)
ENC_NAMES: Mapping[str, str] = MappingProxyType({CBC_AES: "AES-CBC [RFC3602]"})
AUTH_NAMES: Mapping[str, str] = MappingProxyType(
    {
        # The kernel's 96-bit truncation (keys.algorithms), not RFC 4868's 128.
        HMAC_SHA256: "HMAC-SHA-256-96 [draft-ietf-ipsec-ciph-sha-256-00]",
        HMAC_SHA512: "HMAC-SHA-512-256 [RFC4868]",
        HMAC_SHA1: "HMAC-SHA-1-96 [RFC2404]",
    }
)


def esp_sa_entry(line: KeyLine, src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address) -> str:
    """The `uat:esp_sa` record for the SA from `src` to `dst` keyed by `line` (already derived)."""
    src_addr, dst_addr = _display(src), _display(dst)
    if src_addr.version != dst_addr.version:
        raise ValueError(f"source {src} and destination {dst} are of different address families")
    protocol = "IPv4" if src_addr.version == 4 else "IPv6"
    m = line.material
    if isinstance(m, AeadKey):
        enc, enc_key, auth, auth_key = GCM_NAMES[m.icv_bits], _hex(m.key), "NULL", ""
    else:
        enc, enc_key = ENC_NAMES[m.enc_algo], _hex(m.enc_key)
        auth, auth_key = AUTH_NAMES[m.auth_algo], _hex(m.auth_key)
    fields = (protocol, str(src_addr), str(dst_addr), f"0x{line.key_id:08x}", enc, enc_key, auth, auth_key)
    return ",".join(f'"{field}"' for field in fields)


def _display(address: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    # A v4-mapped address is on the wire as IPv4, the same canonical form the derivation uses.
    return ip_address(canonical_ip(address))


def _hex(key: SecretBytes) -> str:
    return "0x" + key.reveal().hex()
