"""mac1/mac2 and cookie replies (whitepaper 5.4.4, 5.4.7): the checker is ours, a generator per peer."""

from __future__ import annotations

from collections.abc import Callable

from ciphermesh.wireguard.constants import COOKIE_REFRESH_TIME, LABEL_COOKIE, LABEL_MAC1
from ciphermesh.wireguard.messages import MAC1_OFFSET_FROM_END, MAC2_OFFSET_FROM_END, pack_cookie_reply
from ciphermesh.wireguard.primitives import hash_, mac
from ciphermesh.wireguard.xchacha import XNONCE_SIZE, xchacha20poly1305_decrypt, xchacha20poly1305_encrypt

_NEVER = float("-inf")


def _mac1_region(msg: bytes | bytearray) -> bytes:
    return bytes(msg[:-MAC1_OFFSET_FROM_END])


def _mac2_region(msg: bytes | bytearray) -> bytes:
    return bytes(msg[:-MAC2_OFFSET_FROM_END])


def _mac1_of(msg: bytes | bytearray) -> bytes:
    return bytes(msg[-MAC1_OFFSET_FROM_END:-MAC2_OFFSET_FROM_END])


class CookieChecker:
    """Verifies mac1/mac2 of handshake messages sent to us and makes cookie replies under load."""

    __slots__ = ("_cookie_key", "_mac1_key", "_secret", "_secret_set")

    def __init__(self, local_public: bytes) -> None:
        self._mac1_key = hash_(LABEL_MAC1, local_public)
        self._cookie_key = hash_(LABEL_COOKIE, local_public)
        self._secret = b""
        self._secret_set = _NEVER

    def check_mac1(self, msg: bytes) -> bool:
        # Constant time is not needed for mac1: it only proves knowledge of our public key.
        return mac(self._mac1_key, _mac1_region(msg)) == _mac1_of(msg)

    def check_mac2(self, msg: bytes, source: bytes, now: float) -> bool:
        """mac2 is valid when it was made with the cookie we would hand `source` now."""
        if now - self._secret_set > COOKIE_REFRESH_TIME:
            return False
        cookie = mac(self._secret, source)
        return mac(cookie, _mac2_region(msg)) == bytes(msg[-MAC2_OFFSET_FROM_END:])

    def create_reply(
        self, msg: bytes, receiver: int, source: bytes, now: float, randbytes: Callable[[int], bytes]
    ) -> bytes:
        """A cookie reply for `msg` from `source` (address bytes || port), to the sender index `receiver`."""
        if now - self._secret_set > COOKIE_REFRESH_TIME:
            self._secret = randbytes(32)
            self._secret_set = now
        cookie = mac(self._secret, source)
        nonce = randbytes(XNONCE_SIZE)
        encrypted = xchacha20poly1305_encrypt(self._cookie_key, nonce, cookie, _mac1_of(msg))
        return pack_cookie_reply(receiver, nonce, encrypted)


class CookieGenerator:
    """Adds mac1/mac2 to the handshake messages we send to one peer and keeps the cookie it gave us."""

    __slots__ = ("_cookie", "_cookie_key", "_cookie_set", "_last_mac1", "_mac1_key")

    def __init__(self, peer_public: bytes) -> None:
        self._mac1_key = hash_(LABEL_MAC1, peer_public)
        self._cookie_key = hash_(LABEL_COOKIE, peer_public)
        self._cookie = b""
        self._cookie_set = _NEVER
        self._last_mac1: bytes | None = None

    def add_macs(self, msg: bytearray, now: float) -> None:
        """Fill mac1, and mac2 while the peer's cookie is fresh (else mac2 stays zero)."""
        end1 = len(msg) - MAC2_OFFSET_FROM_END
        start1 = len(msg) - MAC1_OFFSET_FROM_END
        mac1 = mac(self._mac1_key, bytes(msg[:start1]))
        msg[start1:end1] = mac1
        self._last_mac1 = mac1
        if now - self._cookie_set > COOKIE_REFRESH_TIME:
            return
        msg[end1:] = mac(self._cookie, bytes(msg[:end1]))

    def consume_reply(self, nonce: bytes, encrypted_cookie: bytes, now: float) -> bool:
        """Accept a cookie reply that answers the last message we sent this peer."""
        if self._last_mac1 is None:
            return False
        cookie = xchacha20poly1305_decrypt(self._cookie_key, nonce, encrypted_cookie, self._last_mac1)
        if cookie is None:
            return False
        self._cookie = cookie
        self._cookie_set = now
        return True
