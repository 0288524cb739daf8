"""Fuzz: 100,000 random and mutated packets into SADatabase.decapsulate; nothing raises, every drop counts."""

from __future__ import annotations

import random
import struct
from collections import Counter as Tally
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from ciphermesh.esp import Decapsulated, Drop, OutboundSA, SADatabase
from tests.support.esp import ipv4_packet, ipv6_packet, sa_pair

PACKETS = 100_000
SEED = 20240611

IPAddress = IPv4Address | IPv6Address
Tunnel = tuple[IPAddress, IPAddress, OutboundSA]


def _setup() -> tuple[SADatabase, list[Tunnel]]:
    """One SA per transform and ESN setting, each on its own tunnel, all with SPI 3 (as Cilium)."""
    database = SADatabase()
    tunnels: list[Tunnel] = []
    transforms = ["gcm128", "gcm256", "gcm128-icv8", "cbc-sha256", "cbc-sha512", "cbc-sha1"]
    for index, transform in enumerate(transforms):
        for esn in (True, False):
            n = 2 * index + esn + 1
            src: IPAddress
            dst: IPAddress
            if n % 3:
                src, dst = IPv4Address(f"10.0.{n}.1"), IPv4Address("10.0.100.1")
            else:
                src, dst = IPv6Address(f"fd00::{n}"), IPv6Address("fd00::100")
            # Start just below 2^32 so that ESN tunnels cross into the next subspace while fuzzing.
            outbound, inbound = sa_pair(transform, esn=esn, seed=n, first_seq=2**32 - 2000 if esn else 1)
            inbound.replay.accept(outbound.seq)
            database.add(src, dst, inbound)
            tunnels.append((src, dst, outbound))
    return database, tunnels


def _mutations(rng: random.Random) -> list[Callable[[bytes], bytes]]:
    def flip_bits(packet: bytes) -> bytes:
        data = bytearray(packet)
        for _ in range(rng.randint(1, 3)):
            bit = rng.randrange(len(data) * 8)
            data[bit // 8] ^= 1 << (bit % 8)
        return bytes(data)

    def set_byte(packet: bytes) -> bytes:
        data = bytearray(packet)
        data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)

    return [
        lambda p: p[: rng.randrange(len(p))],  # truncation
        lambda p: p + rng.randbytes(rng.randint(1, 40)),  # extension
        flip_bits,
        set_byte,
        lambda p: struct.pack(">I", rng.choice([0, 1, 2, 3, 4, 15, rng.getrandbits(32)])) + p[4:],  # SPI
        lambda p: p[:4] + struct.pack(">I", rng.getrandbits(32)) + p[8:],  # sequence number
        lambda p: (
            p[:4]
            + struct.pack(">I", (struct.unpack_from(">I", p, 4)[0] + rng.randint(-3000, 3000)) % 2**32)
            + p[8:]
        ),  # nearby sequence number
        lambda p: p[:8] + rng.randbytes(len(p) - 8),  # right header, random rest
        lambda p: rng.randbytes(rng.randint(0, 80)),  # random bytes, mostly short
        lambda p: rng.randbytes(rng.randint(0, 3000)),  # random bytes, any size
        lambda p: p[:-16] + bytes(16),  # zeroed ICV
    ]


def test_fuzz_decapsulate_never_raises_and_counts_every_drop() -> None:
    rng = random.Random(SEED)
    database, tunnels = _setup()
    mutations = _mutations(rng)
    replay_pool: list[tuple[IPAddress, IPAddress, bytes]] = []
    accepted = 0
    kinds: Tally[str] = Tally()
    for _ in range(PACKETS):
        src, dst, outbound = rng.choice(tunnels)
        body = rng.randbytes(rng.choice([0, 1, 20, 100, 1400]))
        inner = ipv4_packet(body) if rng.random() < 0.7 else ipv6_packet(body)
        roll = rng.random()
        if roll < 0.25:
            packet = outbound.encapsulate(inner)
            replay_pool.append((src, dst, packet))
            kind = "genuine"
        elif roll < 0.35 and replay_pool:
            src, dst, packet = rng.choice(replay_pool)
            kind = "replayed"
        else:
            mutation = rng.choice(mutations)
            packet = mutation(outbound.encapsulate(inner))
            kind = "mutated"
            if rng.random() < 0.1:
                src, dst = rng.choice(tunnels)[:2]  # right bytes, wrong tunnel
        result = database.decapsulate(src, dst, packet)
        if isinstance(result, Decapsulated):
            accepted += 1
        else:
            assert isinstance(result, Drop)
        kinds[kind] += 1

    totals = database.totals()
    assert totals.dropped == PACKETS - accepted
    assert totals.packets_in == accepted
    # Every inbound reason a forger can reach was reached (mode, padding and dummy drops need
    # authentic packets with a crafted trailer; test_esp_sa covers those).
    for reason in (
        Drop.XfrmInHdrError,
        Drop.XfrmInNoStates,
        Drop.XfrmInStateProtoError,
        Drop.XfrmInStateSeqError,
    ):
        assert totals[reason] > 100, (reason, totals)
    assert kinds["genuine"] > 20_000 and kinds["mutated"] > 50_000 and kinds["replayed"] > 5_000
    # Genuine packets may arrive late or be replayed, but most are accepted.
    assert accepted > kinds["genuine"] * 0.9
