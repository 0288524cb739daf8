"""The device's state and its peers: configuration, status, the index table and endpoints.

The lowest layer of `Device` (device.py): the handshake, send, receive and timer layers above it share
this state and its bookkeeping; nothing here calls up into them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ciphermesh.wireguard.allowedips import AllowedIPs
from ciphermesh.wireguard.constants import (
    DEFAULT_HANDSHAKE_LOAD_THRESHOLD,
    DEFAULT_MTU,
    DEFAULT_TIMING,
    Timing,
)
from ciphermesh.wireguard.cookie import CookieChecker
from ciphermesh.wireguard.counters import Drop, DropCounters
from ciphermesh.wireguard.events import Event, EventKind
from ciphermesh.wireguard.keypair import Keypair
from ciphermesh.wireguard.keys import PrivateKey, PublicKey
from ciphermesh.wireguard.peer import Endpoint, Network, Peer, PeerConfig
from ciphermesh.wireguard.ratelimiter import RateLimiter


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """What `wg show` reports for a peer; `latest_handshake` is wall-clock seconds or None."""

    public_key: str
    has_preshared_key: bool
    endpoint: Endpoint | None
    allowed_ips: tuple[str, ...]
    latest_handshake: float | None
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int


class PeerTable:
    """A static key, the peers, the index table shared by their sessions, and the device's outputs."""

    def __init__(
        self,
        private_key: PrivateKey,
        *,
        randbytes: Callable[[int], bytes],
        wallclock: Callable[[], float],
        timing: Timing = DEFAULT_TIMING,
        mtu: int = DEFAULT_MTU,
        handshake_load_threshold: int = DEFAULT_HANDSHAKE_LOAD_THRESHOLD,
    ) -> None:
        self._private = private_key
        self.public_key: PublicKey = private_key.public_key()
        self._rand = randbytes
        self._wallclock = wallclock
        self.timing = timing
        self.mtu = mtu
        self._reject_after_messages = timing.reject_after_messages
        self._rekey_after_messages = timing.rekey_after_messages
        self._keepalive_timeout = timing.keepalive_timeout
        self._peers: dict[bytes, Peer] = {}
        self._index: dict[int, Keypair | Peer] = {}
        self._routes: AllowedIPs[Peer] = AllowedIPs()
        self._checker = CookieChecker(self.public_key.raw)
        self._ratelimiter = RateLimiter()
        self._load_threshold = handshake_load_threshold
        self._load_window_start = float("-inf")
        self._load_count = 0
        self._under_load_until = float("-inf")
        self.outgoing: list[tuple[bytes, Endpoint]] = []
        self.events: list[Event] = []
        self.drops = DropCounters()

    # Configuration

    def add_peer(self, config: PeerConfig) -> Peer:
        if config.public_key.raw in self._peers:
            raise ValueError(f"peer {config.public_key.to_base64()} already exists")
        if config.public_key == self.public_key:
            raise ValueError("a peer cannot have the interface's own public key")
        peer = Peer(config, timing=self.timing, jitter=self._jitter, forget=self._forget_keypair)
        self._peers[config.public_key.raw] = peer
        for network in config.allowed_ips:
            self._routes.insert(network, peer)
        return peer

    def remove_peer(self, public_key: PublicKey) -> None:
        peer = self._peers.pop(public_key.raw, None)
        if peer is None:
            raise ValueError(f"no peer {public_key.to_base64()}")
        self._routes.remove_owner(peer)
        self._zero_and_flush(peer)
        peer.timers.stop()

    def sync_peers(self, configs: Sequence[PeerConfig]) -> None:
        """Make the peers exactly `configs`, as `wg syncconf` does: peers that stay keep their sessions."""
        wanted = {c.public_key.raw: c for c in configs}
        if len(wanted) != len(configs):
            raise ValueError("a peer appears twice")
        if self.public_key.raw in wanted:
            raise ValueError("a peer cannot have the interface's own public key")
        for raw in [r for r in self._peers if r not in wanted]:
            self.remove_peer(self._peers[raw].public_key)
        for raw, config in wanted.items():
            peer = self._peers.get(raw)
            if peer is None:
                self.add_peer(config)
                continue
            peer.preshared_key = config.preshared_key
            if config.endpoint is not None:
                peer.endpoint = config.endpoint
            peer.timers.persistent_interval = config.persistent_keepalive
            self._routes.remove_owner(peer)
            for network in config.allowed_ips:
                self._routes.insert(network, peer)

    @property
    def peers(self) -> list[Peer]:
        return list(self._peers.values())

    def allowed_ips(self, peer: Peer) -> list[Network]:
        return self._routes.networks_of(peer)

    def peer_status(self) -> list[PeerStatus]:
        return [
            PeerStatus(
                public_key=p.public_key.to_base64(),
                has_preshared_key=p.preshared_key is not None,
                endpoint=p.endpoint,
                allowed_ips=tuple(str(n) for n in self._routes.networks_of(p)),
                latest_handshake=p.last_handshake_wall,
                rx_bytes=p.rx_bytes,
                tx_bytes=p.tx_bytes,
                persistent_keepalive=p.persistent_keepalive,
            )
            for p in self._peers.values()
        ]

    # Bookkeeping

    def _emit(self, peer: Peer, datagram: bytes) -> None:
        endpoint = peer.endpoint
        if endpoint is None:
            self.drops.add(Drop.NO_ENDPOINT)
            return
        self.outgoing.append((datagram, endpoint))
        peer.tx_bytes += len(datagram)

    def _set_endpoint(self, peer: Peer, source: Endpoint, now: float) -> None:
        if peer.endpoint != source:
            peer.endpoint = source
            detail = f"{source[0]}:{source[1]}"
            self.events.append(Event(EventKind.ENDPOINT_CHANGED, peer.public_key.to_base64(), now, detail))

    def _zero_and_flush(self, peer: Peer) -> None:
        peer.keypairs.clear()
        self._forget_index(peer.handshake.local_index)
        peer.handshake.clear()
        peer.staged.clear()

    def _new_index(self, owner: Peer) -> int:
        while True:
            index = int.from_bytes(self._rand(4), "little")
            if index and index not in self._index:
                self._index[index] = owner
                return index

    def _forget_index(self, index: int) -> None:
        if index and isinstance(self._index.get(index), Peer):
            del self._index[index]

    def _forget_keypair(self, keypair: Keypair) -> None:
        if self._index.get(keypair.local_index) is keypair:
            del self._index[keypair.local_index]

    def _jitter(self) -> float:
        max_ms = int(self.timing.rekey_timeout_jitter_max * 1000)
        if max_ms <= 0:
            return 0.0
        return (int.from_bytes(self._rand(4), "little") % max_ms) / 1000

    def _internal_error(self, exc: Exception, now: float) -> None:
        self.drops.add(Drop.INTERNAL_ERROR)
        self.events.append(Event(EventKind.INTERNAL_ERROR, "", now, f"{type(exc).__name__}: {exc}"))
