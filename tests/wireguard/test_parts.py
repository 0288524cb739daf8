"""The small parts on their own: rate limiter, allowed-IPs lookup, cookies, keypair rotation, timers."""

from __future__ import annotations

import random
from ipaddress import ip_address, ip_network

import pytest

from ciphermesh.wireguard.allowedips import AllowedIPs
from ciphermesh.wireguard.constants import DEFAULT_TIMING, Timing
from ciphermesh.wireguard.cookie import CookieChecker, CookieGenerator
from ciphermesh.wireguard.keypair import Keypair, Keypairs
from ciphermesh.wireguard.keys import PrivateKey
from ciphermesh.wireguard.messages import pack_initiation_unmacked
from ciphermesh.wireguard.ratelimiter import RateLimiter
from ciphermesh.wireguard.timers import PeerTimers, Timer


def test_rate_limiter_burst_refill_and_garbage_collection() -> None:
    limiter = RateLimiter()
    key = ip_address("192.0.2.1").packed
    assert [limiter.allow(key, 10.0) for _ in range(6)] == [True, True, True, True, False, False]
    assert limiter.allow(ip_address("192.0.2.2").packed, 10.0)  # another source has its own bucket
    # One packet costs 50 ms of credit (20 per second); the bucket kept exactly one packet's worth,
    # which is not enough on its own: a millisecond more is.
    assert limiter.allow(key, 10.001)
    assert not limiter.allow(key, 10.002)
    assert limiter.allow(key, 10.055)
    assert len(limiter) == 2
    limiter.allow(b"other", 12.0)
    assert len(limiter) == 1


def test_allowed_ips_longest_prefix_and_moves() -> None:
    table: AllowedIPs[str] = AllowedIPs()
    table.insert(ip_network("10.0.0.0/8"), "wide")
    table.insert(ip_network("10.1.0.0/16"), "narrow")
    table.insert(ip_network("0.0.0.0/0"), "default")
    table.insert(ip_network("fd00::/64"), "v6")
    assert table.lookup(ip_address("10.1.2.3").packed) == "narrow"
    assert table.lookup(ip_address("10.2.0.1").packed) == "wide"
    assert table.lookup(ip_address("192.0.2.1").packed) == "default"
    assert table.lookup(ip_address("fd00::7").packed) == "v6"
    assert table.lookup(ip_address("fd01::7").packed) is None
    table.insert(ip_network("10.1.0.0/16"), "wide")  # a prefix has one owner: it moves
    assert table.lookup(ip_address("10.1.2.3").packed) == "wide"
    assert [str(n) for n in table.networks_of("wide")] == ["10.1.0.0/16", "10.0.0.0/8"]
    table.remove_owner("wide")
    assert table.lookup(ip_address("10.1.2.3").packed) == "default"
    assert table.lookup(b"\x01\x02") is None


def _initiation(rng: random.Random) -> bytearray:
    return pack_initiation_unmacked(rng.getrandbits(32), rng.randbytes(108))


def test_cookie_round_trip_and_mac2_lifetime() -> None:
    rng = random.Random(4)
    responder = PrivateKey.generate(rng.randbytes).public_key().raw
    checker, generator = CookieChecker(responder), CookieGenerator(responder)
    source = ip_address("192.0.2.1").packed + (51820).to_bytes(2, "big")
    message = _initiation(rng)
    generator.add_macs(message, now=0.0)
    assert checker.check_mac1(bytes(message)) and message[-16:] == bytes(16)
    assert not checker.check_mac2(bytes(message), source, now=0.0)
    reply = checker.create_reply(bytes(message), 7, source, 0.0, rng.randbytes)
    assert len(reply) == 64 and reply[:8] == bytes([3, 0, 0, 0, 7, 0, 0, 0])
    assert generator.consume_reply(reply[8:32], reply[32:64], now=1.0)
    again = _initiation(rng)
    generator.add_macs(again, now=2.0)
    assert checker.check_mac2(bytes(again), source, now=2.0)
    other_port = ip_address("192.0.2.1").packed + (51821).to_bytes(2, "big")
    assert not checker.check_mac2(bytes(again), other_port, now=2.0)
    assert not checker.check_mac2(bytes(again), source, now=200.0)  # the cookie secret went stale
    late = _initiation(rng)
    generator.add_macs(late, now=200.0)  # our cookie is older than two minutes: no mac2
    assert late[-16:] == bytes(16)
    # A reply authenticated for an earlier message is refused.
    assert not generator.consume_reply(reply[8:32], reply[32:64], now=201.0)


def _keypair(initiator: bool, index: int, forgotten: list[int]) -> Keypair:
    del forgotten
    return Keypair(
        None,  # type: ignore[arg-type]
        bytes(32),
        bytes(32),
        created=0.0,
        is_initiator=initiator,
        local_index=index,
        remote_index=index,
        timing=DEFAULT_TIMING,
    )


def test_keypair_rotation_previous_current_next() -> None:
    forgotten: list[int] = []
    pairs = Keypairs(lambda k: forgotten.append(k.local_index))
    a, b, c, d = (_keypair(i in (1, 4), i, forgotten) for i in (1, 2, 3, 4))
    pairs.install(a)  # we initiated: usable at once
    assert (pairs.previous, pairs.current, pairs.next) == (None, a, None)
    pairs.install(b)  # we responded: waits as next
    assert (pairs.previous, pairs.current, pairs.next) == (None, a, b)
    assert not pairs.confirm(a) and pairs.confirm(b)
    assert (pairs.previous, pairs.current, pairs.next) == (a, b, None)
    pairs.install(c)
    assert (pairs.previous, pairs.current, pairs.next) == (None, b, c) and forgotten == [1]
    pairs.install(d)  # initiator while next is pending: next becomes previous, current goes
    assert (pairs.previous, pairs.current, pairs.next) == (c, d, None) and forgotten == [1, 2]
    pairs.clear()
    assert forgotten == [1, 2, 3, 4]


def test_timers_fire_in_deadline_order_and_clear() -> None:
    timers = PeerTimers(Timing(), jitter=lambda: 0.1, persistent_interval=25)
    timers.handshake_initiated(0.0)
    timers.data_received(0.0)
    timers.any_authenticated_packet_traversal(0.0)
    assert timers.next_deadline() == pytest.approx(5.1)
    assert timers.pop_due(4.0) == []
    assert timers.pop_due(30.0) == [
        Timer.RETRANSMIT_HANDSHAKE,
        Timer.SEND_KEEPALIVE,
        Timer.PERSISTENT_KEEPALIVE,
    ]
    assert timers.next_deadline() is None


def test_timing_rejects_inconsistent_values() -> None:
    with pytest.raises(ValueError, match="rekey_after_time"):
        Timing(rekey_after_time=200)
    with pytest.raises(ValueError, match="message limits"):
        Timing(rekey_after_messages=10, reject_after_messages=5)
    assert Timing().max_timer_handshakes == 18
