"""Two sans-IO WireGuard devices wired back to back, with a fake clock, for the core's tests."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network

from ciphermesh.wireguard.constants import DEFAULT_TIMING, Timing
from ciphermesh.wireguard.device import Device
from ciphermesh.wireguard.keys import PresharedKey, PrivateKey
from ciphermesh.wireguard.peer import Endpoint, PeerConfig

EP_A: Endpoint = ("192.0.2.1", 51820)
EP_B: Endpoint = ("192.0.2.2", 51821)
WALL_EPOCH = 1_700_000_000.0


def ipv4_packet(src: str, dst: str, payload: bytes = b"ping", proto: int = 17) -> bytes:
    """A minimal IPv4 packet (checksums are not checked by WireGuard)."""
    total = 20 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, proto, 0, ip_address(src).packed, ip_address(dst).packed
    )
    return header + payload


@dataclass
class Clock:
    now: float = 1000.0

    def wall(self) -> float:
        return WALL_EPOCH + self.now


@dataclass
class Pair:
    """Device `a` (tunnel 10.9.0.1) and `b` (10.9.0.2); `a` knows b's endpoint, b learns a's."""

    a: Device
    b: Device
    clock: Clock
    delivered_a: list[bytes] = field(default_factory=list)
    delivered_b: list[bytes] = field(default_factory=list)
    # Every datagram that crossed, as (sender name, datagram), for tests that replay or tamper.
    wire: list[tuple[str, bytes]] = field(default_factory=list)
    source_a: Endpoint = EP_A
    source_b: Endpoint = EP_B

    def pump(self, drop: Callable[[str, bytes], bool] | None = None, rounds: int = 20) -> None:
        """Deliver datagrams both ways until quiet; `drop(sender, datagram)` may discard some."""
        for _ in range(rounds):
            moved = False
            for name, src, dst, source, sink in (
                ("a", self.a, self.b, self.source_a, self.delivered_b),
                ("b", self.b, self.a, self.source_b, self.delivered_a),
            ):
                for datagram, _endpoint in src.take_outgoing():
                    moved = True
                    self.wire.append((name, datagram))
                    if drop is not None and drop(name, datagram):
                        continue
                    packet = dst.receive(datagram, source, self.clock.now)
                    if packet is not None:
                        sink.append(packet)
            if not moved:
                return

    def advance(self, seconds: float, step: float = 0.5) -> None:
        """Move the clock forward, ticking both devices and pumping at each step."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.now = min(end, self.clock.now + step)
            self.a.tick(self.clock.now)
            self.b.tick(self.clock.now)
            self.pump()

    def a_to_b(self, payload: bytes = b"ping") -> None:
        self.a.send(ipv4_packet("10.9.0.1", "10.9.0.2", payload), self.clock.now)
        self.pump()

    def b_to_a(self, payload: bytes = b"pong") -> None:
        self.b.send(ipv4_packet("10.9.0.2", "10.9.0.1", payload), self.clock.now)
        self.pump()


def make_pair(
    seed: int = 1,
    *,
    psk_a: bool = False,
    psk_b: bool = False,
    timing: Timing = DEFAULT_TIMING,
    keepalive_a: int = 0,
    load_threshold: int = 128,
) -> Pair:
    """`load_threshold` is b's: how many handshake messages a second put b under load."""
    rng = random.Random(seed)
    clock = Clock()
    key_a = PrivateKey.generate(rng.randbytes)
    key_b = PrivateKey.generate(rng.randbytes)
    psk = PresharedKey.generate(rng.randbytes)
    a = Device(key_a, randbytes=rng.randbytes, wallclock=clock.wall, timing=timing)
    b = Device(
        key_b,
        randbytes=rng.randbytes,
        wallclock=clock.wall,
        timing=timing,
        handshake_load_threshold=load_threshold,
    )
    a.add_peer(
        PeerConfig(
            key_b.public_key(), psk if psk_a else None, EP_B, (ip_network("10.9.0.2/32"),), keepalive_a
        )
    )
    b.add_peer(PeerConfig(key_a.public_key(), psk if psk_b else None, None, (ip_network("10.9.0.1/32"),)))
    return Pair(a, b, clock)
