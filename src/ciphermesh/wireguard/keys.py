"""WireGuard keys as `wg genkey` / `wg pubkey` / `wg genpsk` make them: base64 of 32 bytes, X25519 clamped."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

KEY_LEN = 32
KEY_LEN_BASE64 = 44


class InvalidKeyError(ValueError):
    """A key that is not 32 bytes of base64; the message never contains the key."""


def decode_key(text: str, what: str = "key") -> bytes:
    """The 32 bytes of a base64 key as wg(8) prints it (44 characters, one '=' of padding)."""
    text = text.strip()
    if len(text) != KEY_LEN_BASE64 or not text.endswith("="):
        raise InvalidKeyError(f"{what} must be 44 characters of base64 (as `wg genkey` prints)")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidKeyError(f"{what} is not valid base64") from exc
    if len(raw) != KEY_LEN:
        raise InvalidKeyError(f"{what} must decode to 32 bytes")
    return raw


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def clamp(raw: bytes) -> bytes:
    """X25519 clamping, as `wg genkey` applies it before printing."""
    if len(raw) != KEY_LEN:
        raise InvalidKeyError("a private key is 32 bytes")
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


class PublicKey:
    """A peer's static public key; public, so its repr shows it."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_LEN:
            raise InvalidKeyError("a public key is 32 bytes")
        self.raw = bytes(raw)

    @classmethod
    def from_base64(cls, text: str) -> PublicKey:
        return cls(decode_key(text, "public key"))

    def to_base64(self) -> str:
        return encode_key(self.raw)

    def short(self) -> str:
        """wireguard-go's abbreviation for logs: first 4 and characters 39..42 of the base64."""
        b64 = self.to_base64()
        return f"{b64[:4]}…{b64[39:43]}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and self.raw == other.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.to_base64()})"


class _Secret:
    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_LEN:
            raise InvalidKeyError(f"a {self._what()} is 32 bytes")
        self._raw = bytes(raw)

    @classmethod
    def _what(cls) -> str:
        return "key"

    def reveal(self) -> bytes:
        return self._raw

    def to_base64(self) -> str:
        """The key in wg(8)'s encoding: only for writing key files and `--reveal`."""
        return encode_key(self._raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Secret) or type(other) is not type(self):
            return False
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._raw))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>)"

    __str__ = __repr__


class PrivateKey(_Secret):
    """A static private key, stored clamped; repr and str never show it."""

    __slots__ = ("_x25519",)

    def __init__(self, raw: bytes) -> None:
        super().__init__(clamp(raw))
        self._x25519 = X25519PrivateKey.from_private_bytes(self._raw)

    @classmethod
    def _what(cls) -> str:
        return "private key"

    @classmethod
    def from_base64(cls, text: str) -> PrivateKey:
        return cls(decode_key(text, "private key"))

    @classmethod
    def generate(cls, randbytes: Callable[[int], bytes]) -> PrivateKey:
        """`wg genkey`: 32 random bytes, clamped."""
        return cls(randbytes(KEY_LEN))

    def x25519(self) -> X25519PrivateKey:
        return self._x25519

    def public_key(self) -> PublicKey:
        """`wg pubkey`."""
        return PublicKey(self._x25519.public_key().public_bytes_raw())


class PresharedKey(_Secret):
    """The optional symmetric key mixed into the handshake; all zeros when none is configured."""

    __slots__ = ()

    @classmethod
    def _what(cls) -> str:
        return "preshared key"

    @classmethod
    def from_base64(cls, text: str) -> PresharedKey:
        return cls(decode_key(text, "preshared key"))

    @classmethod
    def generate(cls, randbytes: Callable[[int], bytes]) -> PresharedKey:
        """`wg genpsk`."""
        return cls(randbytes(KEY_LEN))

    @classmethod
    def zero(cls) -> PresharedKey:
        return cls(bytes(KEY_LEN))

    def is_zero(self) -> bool:
        return not any(self._raw)
