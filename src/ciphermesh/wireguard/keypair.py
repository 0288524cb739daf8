"""Transport keypairs and each peer's previous/current/next rotation (whitepaper 6.1, wireguard-go)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ciphermesh.wireguard.constants import Timing
from ciphermesh.wireguard.messages import transport_prefix
from ciphermesh.wireguard.replay import ReplayFilter

if TYPE_CHECKING:
    from ciphermesh.wireguard.peer import Peer


class Keypair:
    """One session: a send and a receive key, a send counter and a receive replay filter."""

    __slots__ = (
        "created",
        "expires",
        "is_initiator",
        "last_minute_at",
        "local_index",
        "peer",
        "prefix",
        "receive",
        "rekey_at",
        "remote_index",
        "replay",
        "send",
        "send_counter",
    )

    def __init__(
        self,
        peer: Peer,
        send_key: bytes,
        receive_key: bytes,
        *,
        created: float,
        is_initiator: bool,
        local_index: int,
        remote_index: int,
        timing: Timing,
    ) -> None:
        self.peer = peer
        self.send = ChaCha20Poly1305(send_key)
        self.receive = ChaCha20Poly1305(receive_key)
        self.created = created
        # Deadlines precomputed so the per-packet paths compare one float each.
        self.expires = created + timing.reject_after_time
        never = float("inf")
        self.rekey_at = created + timing.rekey_after_time if is_initiator else never
        last_minute = timing.reject_after_time - timing.keepalive_timeout - timing.rekey_timeout
        self.last_minute_at = created + last_minute if is_initiator else never
        self.is_initiator = is_initiator
        self.local_index = local_index
        self.remote_index = remote_index
        self.prefix = transport_prefix(remote_index)
        self.send_counter = 0
        self.replay = ReplayFilter()

    def __repr__(self) -> str:
        return f"Keypair(local={self.local_index:#x}, remote={self.remote_index:#x})"


class Keypairs:
    """previous/current/next: `next` waits for the initiator's first transport message to confirm it."""

    __slots__ = ("_forget", "current", "next", "previous")

    def __init__(self, forget: Callable[[Keypair], None]) -> None:
        self._forget = forget
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None

    def _drop(self, keypair: Keypair | None) -> None:
        if keypair is not None:
            self._forget(keypair)

    def install(self, keypair: Keypair) -> None:
        """Add a fresh keypair, forgetting the ones it displaces."""
        if keypair.is_initiator:
            # The initiator may use its new keys at once: the response confirmed them.
            if self.next is not None:
                self._drop(self.previous)
                self.previous, self.next = self.next, None
                self._drop(self.current)
            else:
                self._drop(self.previous)
                self.previous = self.current
            self.current = keypair
        else:
            self._drop(self.next)
            self.next = keypair
            self._drop(self.previous)
            self.previous = None

    def confirm(self, keypair: Keypair) -> bool:
        """Data arrived on `keypair`: if it was `next` it becomes current (True)."""
        if self.next is not keypair:
            return False
        self._drop(self.previous)
        self.previous, self.current, self.next = self.current, keypair, None
        return True

    def clear(self) -> None:
        for keypair in (self.previous, self.current, self.next):
            self._drop(keypair)
        self.previous = self.current = self.next = None
