"""Sans-IO key handling: the Cilium key secret, per-tunnel derivation, generation."""

from ciphermesh.keys.derive import canonical_ip, derive_tunnel_key
from ciphermesh.keys.generate import ALGO_CHOICES, generate_line, next_key_id, successor_line
from ciphermesh.keys.line import (
    AeadKey,
    AuthEncKey,
    KeyLine,
    KeyLineError,
    KeyMaterial,
    parse_line,
    parse_secret,
)
from ciphermesh.keys.rotation import KeyRotationError, backwards_reason, check_successor, older_key_id
from ciphermesh.keys.secret_bytes import SecretBytes
from ciphermesh.keys.summary import describe_line
from ciphermesh.keys.wireshark import esp_sa_entry

__all__ = [
    "ALGO_CHOICES",
    "AeadKey",
    "AuthEncKey",
    "KeyLine",
    "KeyLineError",
    "KeyMaterial",
    "KeyRotationError",
    "SecretBytes",
    "backwards_reason",
    "canonical_ip",
    "check_successor",
    "derive_tunnel_key",
    "describe_line",
    "esp_sa_entry",
    "generate_line",
    "next_key_id",
    "older_key_id",
    "parse_line",
    "parse_secret",
    "successor_line",
]
