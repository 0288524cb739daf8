"""A configured peer and everything the device keeps about it."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

from ciphermesh.wireguard.constants import STAGED_PACKETS_MAX, Timing
from ciphermesh.wireguard.cookie import CookieGenerator
from ciphermesh.wireguard.handshake import Handshake
from ciphermesh.wireguard.keypair import Keypair, Keypairs
from ciphermesh.wireguard.keys import PresharedKey, PublicKey
from ciphermesh.wireguard.timers import PeerTimers

# What a UDP socket reports as the source: (host, port) or (host, port, flowinfo, scope_id).
Endpoint = tuple[str, int] | tuple[str, int, int, int]
Network = IPv4Network | IPv6Network


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """One [Peer] section: what `wg setconf` accepts, with the endpoint already resolved."""

    public_key: PublicKey
    preshared_key: PresharedKey | None = None
    endpoint: Endpoint | None = None
    allowed_ips: tuple[Network, ...] = field(default=())
    persistent_keepalive: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.persistent_keepalive <= 65535:
            raise ValueError("persistent keepalive must be 0..65535 seconds")


class Peer:
    """Keys, handshake, timers, staged packets and transfer counters of one peer."""

    __slots__ = (
        "cookies",
        "endpoint",
        "handshake",
        "keypairs",
        "last_handshake_wall",
        "preshared_key",
        "public_key",
        "rx_bytes",
        "staged",
        "timers",
        "tx_bytes",
    )

    def __init__(
        self,
        config: PeerConfig,
        *,
        timing: Timing,
        jitter: Callable[[], float],
        forget: Callable[[Keypair], None],
    ) -> None:
        self.public_key = config.public_key
        self.preshared_key = config.preshared_key
        self.endpoint: Endpoint | None = config.endpoint
        self.keypairs = Keypairs(forget)
        self.handshake = Handshake()
        self.timers = PeerTimers(timing, jitter, config.persistent_keepalive)
        self.cookies = CookieGenerator(config.public_key.raw)
        self.staged: deque[bytes] = deque()
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.last_handshake_wall: float | None = None

    @property
    def psk_bytes(self) -> bytes:
        return self.preshared_key.reveal() if self.preshared_key is not None else bytes(32)

    @property
    def persistent_keepalive(self) -> int:
        return self.timers.persistent_interval

    def stage(self, packet: bytes) -> bool:
        """Queue a packet until a keypair exists; False when the oldest had to make room."""
        overflow = len(self.staged) >= STAGED_PACKETS_MAX
        if overflow:
            self.staged.popleft()
        self.staged.append(packet)
        return not overflow

    def __repr__(self) -> str:
        return f"Peer({self.public_key.short()})"
