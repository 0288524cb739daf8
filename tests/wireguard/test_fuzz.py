"""Fuzz: 100,000+ random and mutated datagrams and packets; every one is delivered or counted, none raises."""

from __future__ import annotations

import random

from ciphermesh.wireguard.constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    RESPONSE_SIZE,
)
from ciphermesh.wireguard.counters import Drop
from ciphermesh.wireguard.events import EventKind
from tests.support.wireguard import EP_A, EP_B, Pair, ipv4_packet, make_pair

DATAGRAMS = 100_000
PACKETS = 20_000


def _valid_samples(pair: Pair) -> list[bytes]:
    """Genuine datagrams of every type that crossed while a session was set up and used."""
    pair.a_to_b(b"x" * 100)
    pair.b_to_a(b"y" * 1300)
    pair.advance(11)  # keepalives
    samples = [d for _, d in pair.wire]
    under_load = make_pair(seed=99, load_threshold=1)
    under_load.a.send(ipv4_packet("10.9.0.1", "10.9.0.2"), under_load.clock.now)
    under_load.pump()
    samples += [d for _, d in under_load.wire]
    kinds = {d[0] for d in samples}
    assert kinds == {MESSAGE_INITIATION, MESSAGE_RESPONSE, MESSAGE_COOKIE_REPLY, MESSAGE_TRANSPORT}
    return samples


def _mutate(rng: random.Random, datagram: bytes) -> bytes:
    data = bytearray(datagram)
    choice = rng.randrange(8)
    if choice == 0 and data:  # flip bits
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif choice == 1:  # truncate
        del data[rng.randrange(len(data) + 1) :]
    elif choice == 2:  # extend
        data += rng.randbytes(rng.randint(1, 64))
    elif choice == 3 and len(data) >= 4:  # another message type, or non-zero reserved bytes
        data[rng.randrange(4)] = rng.choice([0, 1, 2, 3, 4, 5, 255])
    elif choice == 4 and len(data) >= 16:  # scramble the receiver index or counter
        start = rng.choice([4, 8])
        data[start : start + 4] = rng.randbytes(4)
    elif choice == 5:  # overwrite a stretch with random bytes
        if data:
            start = rng.randrange(len(data))
            data[start : start + rng.randint(1, 32)] = rng.randbytes(rng.randint(1, 32))
    elif choice == 6:  # splice two messages
        return bytes(data[: rng.randrange(len(data) + 1)]) + rng.randbytes(rng.randint(0, 100))
    # choice 7: replay unchanged
    return bytes(data)


def _random_datagram(rng: random.Random) -> bytes:
    kind = rng.choice([1, 2, 3, 4, rng.randrange(256)])
    size = rng.choice(
        [0, 1, 3, 4, 31, 32, 33, COOKIE_REPLY_SIZE, RESPONSE_SIZE, INITIATION_SIZE, rng.randrange(2100)]
    )
    body = rng.randbytes(size)
    return (bytes([kind, 0, 0, 0]) + body[4:]) if size >= 4 else body


def test_fuzz_datagrams_never_raise_and_are_all_accounted_for() -> None:
    rng = random.Random(20240501)
    # b comes under load during the storm, so the cookie and rate-limit paths are fuzzed too.
    pair = make_pair(seed=5, load_threshold=64)
    samples = _valid_samples(pair)
    device = pair.b
    drops_before = device.drops.total()
    delivered = 0
    sources = [EP_A, EP_B, ("198.51.100.1", 1), ("2001:db8::1", 51820, 0, 0)]
    for n in range(DATAGRAMS):
        datagram = _random_datagram(rng) if n % 3 == 0 else _mutate(rng, rng.choice(samples))
        if device.receive(datagram, rng.choice(sources), pair.clock.now + n * 1e-4) is not None:
            delivered += 1
        device.take_outgoing()
    events = device.take_events()
    assert device.drops[Drop.INTERNAL_ERROR] == 0, [e.detail for e in events if e.kind == "internalError"]
    assert not any(e.kind is EventKind.INTERNAL_ERROR for e in events)
    # Only unchanged replays of genuine data could decrypt, and the replay window refuses them all.
    assert delivered == 0
    assert device.drops.total() - drops_before > DATAGRAMS * 0.9
    assert device.drops[Drop.COOKIE_REQUIRED] > 0
    # The session survives the storm.
    pair.clock.now += DATAGRAMS * 1e-4
    pair.a_to_b(b"still-alive")
    assert pair.delivered_b[-1][20:] == b"still-alive"


def test_fuzz_outbound_packets_never_raise() -> None:
    rng = random.Random(7)
    pair = make_pair(seed=6)
    pair.a_to_b()
    for _ in range(PACKETS):
        size = rng.choice([0, 1, 19, 20, 39, 40, rng.randrange(2100)])
        packet = bytearray(rng.randbytes(size))
        if packet and rng.random() < 0.5:
            packet[0] = rng.choice([0x45, 0x60, 0x00, 0xF0])
        pair.a.send(bytes(packet), pair.clock.now)
        pair.a.take_outgoing()
    assert pair.a.drops[Drop.INTERNAL_ERROR] == 0
