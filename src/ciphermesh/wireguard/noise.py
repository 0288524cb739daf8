"""The Noise framework's CipherState, SymmetricState and HandshakeState for 25519/ChaChaPoly/BLAKE2s.

Generic enough to run the published Noise_IK and Noise_IKpsk2 vectors; WireGuard's handshake is
Noise_IKpsk2 with its identifier as the prologue, built on these same objects.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ciphermesh.wireguard.primitives import (
    HASH_SIZE,
    KEY_SIZE,
    DhError,
    aead_decrypt,
    aead_encrypt,
    dh,
    hash_,
    kdf2,
    kdf3,
)

SUFFIX = "_25519_ChaChaPoly_BLAKE2s"
MAX_NONCE = (1 << 64) - 1


class NoiseError(ValueError):
    """A handshake or transport message that does not authenticate or is malformed."""


@dataclass(frozen=True, slots=True)
class HandshakePattern:
    """A two-message pattern: tokens the responder pre-shares, then each message's tokens."""

    name: str
    responder_premessage: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]

    @property
    def has_psk(self) -> bool:
        return any(token == "psk" for message in self.messages for token in message)


PATTERNS: dict[str, HandshakePattern] = {
    "IK": HandshakePattern("IK", ("s",), (("e", "es", "s", "ss"), ("e", "ee", "se"))),
    "IKpsk2": HandshakePattern("IKpsk2", ("s",), (("e", "es", "s", "ss"), ("e", "ee", "se", "psk"))),
}


def pattern_for(protocol_name: str) -> HandshakePattern:
    if not (protocol_name.startswith("Noise_") and protocol_name.endswith(SUFFIX)):
        raise ValueError(f"unsupported Noise protocol {protocol_name!r}")
    name = protocol_name[len("Noise_") : -len(SUFFIX)]
    if name not in PATTERNS:
        raise ValueError(f"unsupported Noise pattern {name!r}")
    return PATTERNS[name]


class CipherState:
    """A key and a 64-bit nonce counter; without a key it passes data through unchanged."""

    __slots__ = ("k", "n")

    def __init__(self, k: bytes | None = None) -> None:
        self.k = k
        self.n = 0

    def initialize_key(self, k: bytes) -> None:
        self.k = k
        self.n = 0

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.k is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise NoiseError("nonce exhausted")
        out = aead_encrypt(self.k, self.n, plaintext, ad)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.k is None:
            return ciphertext
        if self.n >= MAX_NONCE:
            raise NoiseError("nonce exhausted")
        out = aead_decrypt(self.k, self.n, ciphertext, ad)
        if out is None:
            raise NoiseError("authentication failed")
        self.n += 1
        return out

    def copy(self) -> CipherState:
        c = CipherState(self.k)
        c.n = self.n
        return c


class SymmetricState:
    """Chaining key `ck`, handshake hash `h` and the current CipherState."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASH_SIZE:
            h = protocol_name.ljust(HASH_SIZE, b"\x00")
        else:
            h = hash_(protocol_name)
        self.h = h
        self.ck = h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, k = kdf2(self.ck, ikm)
        self.cipher.initialize_key(k)

    def mix_hash(self, data: bytes) -> None:
        self.h = hash_(self.h, data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, tau, k = kdf3(self.ck, ikm)
        self.mix_hash(tau)
        self.cipher.initialize_key(k)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        out = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(out)
        return out

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        out = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return out

    def split_keys(self) -> tuple[bytes, bytes]:
        """The two transport keys: initiator-to-responder first."""
        return kdf2(self.ck, b"")

    def copy(self) -> SymmetricState:
        s = SymmetricState.__new__(SymmetricState)
        s.h, s.ck, s.cipher = self.h, self.ck, self.cipher.copy()
        return s


def _private(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


class HandshakeState:
    """One side of a two-message handshake; the ephemeral key comes in as bytes (sans-IO)."""

    __slots__ = ("_index", "_sym", "e", "initiator", "pattern", "psk", "re", "rs", "s")

    def __init__(
        self,
        pattern: HandshakePattern,
        *,
        initiator: bool,
        prologue: bytes,
        s: X25519PrivateKey | None,
        rs: bytes | None = None,
        psk: bytes | None = None,
        protocol_name: bytes | None = None,
    ) -> None:
        name = protocol_name if protocol_name is not None else f"Noise_{pattern.name}{SUFFIX}".encode()
        self.pattern = pattern
        self.initiator = initiator
        self._sym = SymmetricState(name)
        self._sym.mix_hash(prologue)
        self.s = s
        self.e: X25519PrivateKey | None = None
        self.rs = rs
        self.re: bytes | None = None
        self.psk = psk
        self._index = 0
        for token in pattern.responder_premessage:
            if token != "s":
                raise ValueError("only a responder static pre-message is supported")
            if initiator:
                if rs is None:
                    raise ValueError("the initiator needs the responder's static public key")
                self._sym.mix_hash(rs)
            else:
                if s is None:
                    raise ValueError("the responder needs its static key")
                self._sym.mix_hash(_public(s))

    @property
    def handshake_hash(self) -> bytes:
        return self._sym.h

    @property
    def finished(self) -> bool:
        return self._index >= len(self.pattern.messages)

    def _my_turn_to_write(self) -> bool:
        return (self._index % 2 == 0) == self.initiator

    def _mix_dh(self, token: str) -> None:
        local, remote = self._dh_pair(token)
        try:
            shared = dh(local, remote)
        except DhError as exc:
            raise NoiseError(str(exc)) from exc
        self._sym.mix_key(shared)

    def _dh_pair(self, token: str) -> tuple[X25519PrivateKey, bytes]:
        # Tokens name (initiator key, responder key); each side uses its own private half.
        first, second = token[0], token[1]
        mine, theirs = (first, second) if self.initiator else (second, first)
        local = self.e if mine == "e" else self.s
        remote = self.re if theirs == "e" else self.rs
        if local is None or remote is None:
            raise NoiseError(f"missing key for {token}")
        return local, remote

    def write_message(self, payload: bytes, ephemeral: bytes | None = None) -> bytes:
        """The next message; `ephemeral` is the 32-byte private key its `e` token uses."""
        if self.finished or not self._my_turn_to_write():
            raise NoiseError("not this side's turn to write")
        out = bytearray()
        for token in self.pattern.messages[self._index]:
            if token == "e":
                if ephemeral is None:
                    raise ValueError("an ephemeral private key is required")
                self.e = _private(ephemeral)
                pub = _public(self.e)
                out += pub
                self._sym.mix_hash(pub)
                if self.pattern.has_psk:
                    self._sym.mix_key(pub)
            elif token == "s":
                if self.s is None:
                    raise ValueError("a static key is required")
                out += self._sym.encrypt_and_hash(_public(self.s))
            elif token == "psk":
                self._sym.mix_key_and_hash(self._psk())
            else:
                self._mix_dh(token)
        out += self._sym.encrypt_and_hash(payload)
        self._index += 1
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        """The payload of the peer's next message; raises NoiseError (state then undefined: use copy())."""
        if self.finished or self._my_turn_to_write():
            raise NoiseError("not this side's turn to read")
        pos = 0
        for token in self.pattern.messages[self._index]:
            if token == "e":
                self.re = self._take(message, pos, KEY_SIZE)
                pos += KEY_SIZE
                self._sym.mix_hash(self.re)
                if self.pattern.has_psk:
                    self._sym.mix_key(self.re)
            elif token == "s":
                size = KEY_SIZE + (16 if self._sym.cipher.k is not None else 0)
                self.rs = self._sym.decrypt_and_hash(self._take(message, pos, size))
                pos += size
            elif token == "psk":
                self._sym.mix_key_and_hash(self._psk())
            else:
                self._mix_dh(token)
        payload = self._sym.decrypt_and_hash(message[pos:])
        self._index += 1
        return payload

    def transport_keys(self) -> tuple[bytes, bytes]:
        """(send key, receive key) for this side once both messages are done: Noise's Split()."""
        if not self.finished:
            raise NoiseError("handshake not finished")
        k1, k2 = self._sym.split_keys()
        return (k1, k2) if self.initiator else (k2, k1)

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) CipherStates for this side once both messages are done."""
        send, receive = self.transport_keys()
        return CipherState(send), CipherState(receive)

    def copy(self) -> HandshakeState:
        c = HandshakeState.__new__(HandshakeState)
        c.pattern, c.initiator, c._sym = self.pattern, self.initiator, self._sym.copy()
        c.s, c.e, c.rs, c.re, c.psk, c._index = self.s, self.e, self.rs, self.re, self.psk, self._index
        return c

    def _psk(self) -> bytes:
        if self.psk is None or len(self.psk) != KEY_SIZE:
            raise NoiseError("the pattern needs a 32-byte pre-shared key")
        return self.psk

    @staticmethod
    def _take(message: bytes, pos: int, size: int) -> bytes:
        if len(message) < pos + size:
            raise NoiseError("message too short")
        return message[pos : pos + size]
