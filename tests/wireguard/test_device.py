"""The sans-IO device: handshakes, sessions, timers, cookies, roaming and drops, on a fake clock."""

from __future__ import annotations

import random
from ipaddress import ip_address, ip_network

import pytest

from ciphermesh.wireguard.constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    KEEPALIVE_SIZE,
    LABEL_MAC1,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    RESPONSE_SIZE,
    Timing,
)
from ciphermesh.wireguard.counters import Drop
from ciphermesh.wireguard.device import Device, padding_size
from ciphermesh.wireguard.events import EventKind
from ciphermesh.wireguard.keys import PrivateKey
from ciphermesh.wireguard.peer import Peer, PeerConfig
from ciphermesh.wireguard.primitives import hash_, mac
from tests.support.wireguard import EP_A, EP_B, ipv4_packet, make_pair


def _kinds(device: Device) -> list[EventKind]:
    return [e.kind for e in device.take_events()]


def _first_peer(device: Device) -> Peer:
    return device.peers[0]


def test_handshake_then_data_both_ways() -> None:
    pair = make_pair()
    pair.a_to_b(b"hello")
    assert [p[20:] for p in pair.delivered_b] == [b"hello"]
    pair.b_to_a(b"world")
    assert [p[20:] for p in pair.delivered_a] == [b"world"]
    assert EventKind.HANDSHAKE_COMPLETED in _kinds(pair.a)
    assert {EventKind.HANDSHAKE_RESPONDED, EventKind.KEYPAIR_CONFIRMED} <= set(_kinds(pair.b))
    a_peer, b_peer = _first_peer(pair.a), _first_peer(pair.b)
    # Every byte one side sent, the other received; both record the handshake.
    assert a_peer.tx_bytes == b_peer.rx_bytes > 0
    assert b_peer.tx_bytes == a_peer.rx_bytes > 0
    assert a_peer.last_handshake_wall == b_peer.last_handshake_wall == pair.clock.wall()
    assert b_peer.endpoint == EP_A
    sizes = [len(d) for _, d in pair.wire]
    assert sizes[:2] == [INITIATION_SIZE, RESPONSE_SIZE]
    assert pair.a.drops.total() == pair.b.drops.total() == 0


def test_responder_waits_for_confirmation_then_uses_the_new_keypair() -> None:
    pair = make_pair()
    # Lose a's first data packet: b holds the session only as `next` and may not send with it.
    pair.a.send(ipv4_packet("10.9.0.1", "10.9.0.2"), pair.clock.now)
    pair.pump(drop=lambda sender, d: sender == "a" and d[0] == 4)
    b_peer = _first_peer(pair.b)
    assert b_peer.keypairs.current is None and b_peer.keypairs.next is not None
    pair.clock.now += 6  # past Rekey-Timeout, so b may start its own handshake
    pair.b_to_a(b"from-b")
    assert [p[20:] for p in pair.delivered_a] == [b"from-b"]
    assert b_peer.keypairs.current is not None and b_peer.keypairs.current.is_initiator


def test_preshared_key_must_match() -> None:
    pair = make_pair(psk_a=True, psk_b=True)
    pair.a_to_b()
    assert len(pair.delivered_b) == 1
    mismatch = make_pair(psk_a=True, psk_b=False)
    mismatch.a_to_b()
    assert mismatch.delivered_b == []
    assert mismatch.a.drops[Drop.BAD_RESPONSE] == 1


def test_wrong_keys_are_dropped() -> None:
    rng = random.Random(7)
    pair = make_pair()
    stranger = Device(PrivateKey.generate(rng.randbytes), randbytes=rng.randbytes, wallclock=pair.clock.wall)
    # The stranger knows b's public key (so mac1 is right) but b does not know the stranger.
    stranger.add_peer(PeerConfig(pair.b.public_key, endpoint=EP_B, allowed_ips=(ip_network("10.9.0.2/32"),)))
    stranger.send(ipv4_packet("10.9.0.1", "10.9.0.2"), pair.clock.now)
    ((initiation, _),) = stranger.take_outgoing()
    assert pair.b.receive(initiation, ("192.0.2.9", 1), pair.clock.now) is None
    assert pair.b.drops[Drop.UNKNOWN_PEER] == 1
    # Addressed to a key b does not have: mac1 fails before any public-key work.
    wrong = Device(PrivateKey.generate(rng.randbytes), randbytes=rng.randbytes, wallclock=pair.clock.wall)
    wrong.add_peer(PeerConfig(stranger.public_key, endpoint=EP_B, allowed_ips=(ip_network("10.9.0.2/32"),)))
    wrong.send(ipv4_packet("10.9.0.1", "10.9.0.2"), pair.clock.now)
    ((initiation, _),) = wrong.take_outgoing()
    pair.b.receive(initiation, ("192.0.2.9", 1), pair.clock.now)
    assert pair.b.drops[Drop.BAD_MAC1] == 1
    assert pair.b.peers[0].keypairs.next is None


def test_replayed_and_stale_initiations_are_dropped() -> None:
    pair = make_pair()
    pair.a_to_b()
    initiation = next(d for s, d in pair.wire if s == "a" and d[0] == MESSAGE_INITIATION)
    pair.clock.now += 1
    pair.b.receive(initiation, EP_A, pair.clock.now)
    assert pair.b.drops[Drop.HANDSHAKE_REPLAY] == 1
    # A fresh session is unaffected by the replay.
    pair.a_to_b(b"after-replay")
    assert pair.delivered_b[-1][20:] == b"after-replay"


def test_initiation_flood_is_dropped() -> None:
    pair = make_pair()
    pair.a.send(ipv4_packet("10.9.0.1", "10.9.0.2"), pair.clock.now)
    first = pair.a.take_outgoing()[0][0]
    pair.clock.now += 5.5  # a retransmits with a newer timestamp
    pair.a.tick(pair.clock.now)
    second = pair.a.take_outgoing()[0][0]
    assert first[0] == second[0] == MESSAGE_INITIATION
    pair.b.receive(first, EP_A, pair.clock.now)
    pair.b.take_outgoing()
    pair.b.receive(second, EP_A, pair.clock.now + 0.01)
    assert pair.b.drops[Drop.HANDSHAKE_FLOOD] == 1
    assert pair.b.take_outgoing() == []
    pair.b.receive(second, EP_A, pair.clock.now + 0.03)
    assert len(pair.b.take_outgoing()) == 1


def test_forged_replayed_and_unknown_transport_messages() -> None:
    pair = make_pair()
    pair.a_to_b(b"one")
    data = next(d for s, d in pair.wire if s == "a" and d[0] == 4 and len(d) > KEEPALIVE_SIZE)
    forged = bytearray(data)
    forged[-1] ^= 0x80
    assert pair.b.receive(bytes(forged), EP_A, pair.clock.now) is None
    assert pair.b.drops[Drop.DECRYPT_FAILED] == 1
    assert pair.b.receive(data, EP_A, pair.clock.now) is None
    assert pair.b.drops[Drop.REPLAYED] == 1
    unknown = bytearray(data)
    unknown[4:8] = bytes(4)
    assert pair.b.receive(bytes(unknown), EP_A, pair.clock.now) is None
    assert pair.b.drops[Drop.UNKNOWN_INDEX] == 1
    assert len(pair.delivered_b) == 1


def test_forged_response_does_not_break_the_pending_handshake() -> None:
    pair = make_pair()
    pair.a.send(ipv4_packet("10.9.0.1", "10.9.0.2"), pair.clock.now)
    pair.pump(drop=lambda sender, d: sender == "b")
    response = next(d for s, d in pair.wire if s == "b")
    forged = bytearray(response)
    forged[20] ^= 1  # inside b's ephemeral key; mac1 recomputed so the forgery reaches the handshake
    forged[-32:-16] = mac(hash_(LABEL_MAC1, pair.a.public_key.raw), bytes(forged[:-32]))
    pair.a.receive(bytes(forged), EP_B, pair.clock.now)
    assert pair.a.drops[Drop.BAD_RESPONSE] == 1
    pair.a.receive(response, EP_B, pair.clock.now)
    pair.pump()
    assert len(pair.delivered_b) == 1


def test_inner_source_must_be_an_allowed_ip_of_the_sender() -> None:
    pair = make_pair()
    pair.a_to_b()
    pair.b.send(ipv4_packet("10.9.9.9", "10.9.0.1"), pair.clock.now)
    pair.pump()
    assert pair.delivered_a == []
    assert pair.a.drops[Drop.DISALLOWED_SOURCE] == 1


def test_outbound_without_a_peer_or_malformed_is_dropped() -> None:
    pair = make_pair()
    pair.a.send(ipv4_packet("10.9.0.1", "10.8.0.1"), pair.clock.now)
    pair.a.send(b"\x45\x00", pair.clock.now)
    pair.a.send(b"\x70" + bytes(40), pair.clock.now)
    assert pair.a.drops[Drop.NO_ROUTE] == 1
    assert pair.a.drops[Drop.BAD_OUTBOUND_PACKET] == 2
    assert pair.a.take_outgoing() == []


def test_ipv6_inner_packets_and_padding_truncation() -> None:
    pair = make_pair()
    for device, own, other in ((pair.a, "fd00::1", "fd00::2"), (pair.b, "fd00::2", "fd00::1")):
        peer = device.peers[0]
        device.remove_peer(peer.public_key)
        device.add_peer(
            PeerConfig(
                peer.public_key,
                endpoint=EP_B if device is pair.a else None,
                allowed_ips=(ip_network(f"{other}/128"),),
            )
        )
        assert own != other
    payload = b"x" * 11
    packet = (
        bytes([0x60, 0, 0, 0])
        + len(payload).to_bytes(2, "big")
        + bytes([17, 64])
        + ip_address("fd00::1").packed
        + ip_address("fd00::2").packed
        + payload
    )
    pair.a.send(packet, pair.clock.now)
    pair.pump()
    assert pair.delivered_b == [packet]
    data = [d for s, d in pair.wire if s == "a" and d[0] == 4 and len(d) > KEEPALIVE_SIZE]
    assert (len(data[0]) - KEEPALIVE_SIZE) % 16 == 0


@pytest.mark.parametrize(
    ("size", "mtu", "expected"),
    [
        (0, 1420, 0),
        (1, 1420, 15),
        (16, 1420, 0),
        (1419, 1420, 1),
        (1420, 1420, 0),
        (17, 0, 15),
        (1500, 1420, 0),
    ],
)
def test_padding_size(size: int, mtu: int, expected: int) -> None:
    assert padding_size(size, mtu) == expected


def test_rekey_after_time_rotates_keypairs_and_old_packets_still_decrypt() -> None:
    pair = make_pair()
    pair.a_to_b()
    pair.b_to_a()
    a_peer = _first_peer(pair.a)
    first = a_peer.keypairs.current
    pair.clock.now += 121
    # Data on the old keypair is still in flight when a decides to rekey.
    pair.b.send(ipv4_packet("10.9.0.2", "10.9.0.1", b"late"), pair.clock.now)
    in_flight = pair.b.take_outgoing()
    pair.a.send(ipv4_packet("10.9.0.1", "10.9.0.2", b"trigger"), pair.clock.now)
    pair.pump()
    assert a_peer.keypairs.current is not first and a_peer.keypairs.previous is first
    assert next(pair.a.receive(d, EP_B, pair.clock.now) for d, _ in in_flight)[20:] == b"late"
    pair.a_to_b(b"on-new-keys")
    assert pair.delivered_b[-1][20:] == b"on-new-keys"


def test_reject_after_time_forces_a_new_handshake() -> None:
    pair = make_pair()
    pair.a_to_b()
    pair.clock.now += 181
    before = len(pair.wire)
    pair.b_to_a(b"after-expiry")
    kinds = [d[0] for _, d in pair.wire[before:]]
    assert kinds[:2] == [1, 2]  # b had to handshake before sending
    assert pair.delivered_a[-1][20:] == b"after-expiry"


def test_expired_keypair_rejects_received_data() -> None:
    pair = make_pair()
    pair.a_to_b()
    pair.b_to_a()
    pair.a.send(ipv4_packet("10.9.0.1", "10.9.0.2"), pair.clock.now)
    late = pair.a.take_outgoing()
    pair.clock.now += 181
    pair.b.receive(late[0][0], EP_A, pair.clock.now)
    assert pair.b.drops[Drop.KEYPAIR_EXPIRED] == 1


def test_rekey_and_reject_after_messages() -> None:
    timing = Timing(rekey_after_messages=5, reject_after_messages=8)
    pair = make_pair(timing=timing)
    pair.a_to_b()
    a_peer = _first_peer(pair.a)
    first = a_peer.keypairs.current
    initiations_before = sum(1 for s, d in pair.wire if s == "a" and d[0] == 1)
    pair.clock.now += 6  # handshakes are at most one per Rekey-Timeout
    for n in range(6):
        pair.a_to_b(bytes([n]))
    assert sum(1 for s, d in pair.wire if s == "a" and d[0] == 1) == initiations_before + 1
    assert a_peer.keypairs.current is not first
    # Without a way to rekey (b unreachable), the old keypair never exceeds its message limit.
    pair2 = make_pair(timing=timing)
    pair2.a_to_b()
    keypair = _first_peer(pair2.a).keypairs.current
    for n in range(20):
        pair2.a.send(ipv4_packet("10.9.0.1", "10.9.0.2", bytes([n])), pair2.clock.now)
        pair2.a.take_outgoing()
    assert keypair is not None and keypair.send_counter == 8


def test_keepalive_after_receiving_data_and_staying_silent() -> None:
    pair = make_pair()
    pair.a_to_b()
    pair.b_to_a()
    pair.a_to_b(b"needs-ack")
    before = len(pair.wire)
    pair.advance(9.5)
    assert [d for s, d in pair.wire[before:] if s == "b"] == []
    pair.advance(1)
    sent = [d for s, d in pair.wire[before:] if s == "b"]
    assert [len(d) for d in sent] == [KEEPALIVE_SIZE]


def test_new_handshake_when_data_goes_unanswered() -> None:
    pair = make_pair()
    pair.a_to_b()
    pair.b_to_a()
    silent_b = lambda sender, _d: sender == "b"  # noqa: E731
    pair.a.send(ipv4_packet("10.9.0.1", "10.9.0.2"), pair.clock.now)
    pair.pump(drop=silent_b)
    before = len(pair.wire)
    for _ in range(40):
        pair.clock.now += 0.5
        pair.a.tick(pair.clock.now)
        pair.b.tick(pair.clock.now)
        pair.pump(drop=silent_b)
    # 10 s keepalive + 5 s rekey timeout + up to 334 ms jitter
    assert any(s == "a" and d[0] == MESSAGE_INITIATION for s, d in pair.wire[before:])


def test_handshake_retries_then_gives_up_and_zeroes_keys() -> None:
    pair = make_pair()
    pair.a.send(ipv4_packet("10.9.0.1", "10.9.0.2"), pair.clock.now)
    unreachable = lambda _s, _d: True  # noqa: E731
    pair.pump(drop=unreachable)
    for _ in range(110 * 4):
        pair.clock.now += 0.25
        pair.a.tick(pair.clock.now)
        pair.pump(drop=unreachable)
    initiations = [d for s, d in pair.wire if s == "a" and d[0] == MESSAGE_INITIATION]
    assert len(initiations) == 20  # the first and 18 retries + 1, as wireguard-go's "after 20 attempts"
    assert EventKind.HANDSHAKE_GAVE_UP in _kinds(pair.a)
    assert pair.a.drops[Drop.HANDSHAKE_GAVE_UP] == 1
    assert len(_first_peer(pair.a).staged) == 0
    deadline = _first_peer(pair.a).timers.zero_key_material
    assert deadline is not None
    pair.clock.now = deadline + 0.1
    pair.a.tick(pair.clock.now)
    assert EventKind.KEYS_ZEROED in _kinds(pair.a)


def test_persistent_keepalive() -> None:
    pair = make_pair(keepalive_a=25)
    pair.a_to_b()
    before = len(pair.wire)
    pair.advance(60)
    keepalives = [d for s, d in pair.wire[before:] if s == "a" and len(d) == KEEPALIVE_SIZE]
    assert len(keepalives) == 2


def test_last_minute_handshake_when_only_receiving() -> None:
    pair = make_pair()
    pair.a_to_b()
    pair.b_to_a()
    pair.clock.now += 166  # past Reject-After-Time - Keepalive-Timeout - Rekey-Timeout
    before = len(pair.wire)
    pair.b.send(ipv4_packet("10.9.0.2", "10.9.0.1"), pair.clock.now)
    pair.pump()
    assert any(s == "a" and d[0] == MESSAGE_INITIATION for s, d in pair.wire[before:])


def test_roaming_follows_authenticated_packets_only() -> None:
    pair = make_pair()
    pair.a_to_b()
    b_peer = _first_peer(pair.b)
    assert b_peer.endpoint == EP_A
    # A forged packet from elsewhere does not move the endpoint.
    junk = bytes([4, 0, 0, 0]) + bytes(28)
    pair.b.receive(junk, ("198.51.100.7", 9), pair.clock.now)
    assert b_peer.endpoint == EP_A
    pair.source_a = ("192.0.2.77", 40000)
    pair.a_to_b(b"moved")
    assert b_peer.endpoint == ("192.0.2.77", 40000)
    pair.b.send(ipv4_packet("10.9.0.2", "10.9.0.1"), pair.clock.now)
    assert [ep for _, ep in pair.b.take_outgoing()] == [("192.0.2.77", 40000)]


def test_simultaneous_initiation_converges() -> None:
    pair = make_pair()
    _first_peer(pair.b).endpoint = EP_A
    pair.a.send(ipv4_packet("10.9.0.1", "10.9.0.2", b"from-a"), pair.clock.now)
    pair.b.send(ipv4_packet("10.9.0.2", "10.9.0.1", b"from-b"), pair.clock.now)
    pair.pump()
    # In lockstep each side answers the other's initiation and drops the answer to its own; the
    # retransmit jitter breaks the tie, as it does between real peers.
    pair.advance(12, step=0.01)
    assert [p[20:] for p in pair.delivered_b] == [b"from-a"]
    assert [p[20:] for p in pair.delivered_a] == [b"from-b"]


def test_cookie_reply_under_load_then_mac2_admits_the_handshake() -> None:
    pair = make_pair(load_threshold=1)
    pair.a.send(ipv4_packet("10.9.0.1", "10.9.0.2"), pair.clock.now)
    pair.pump()
    assert pair.b.drops[Drop.COOKIE_REQUIRED] == 1
    assert any(
        s == "b" and d[0] == MESSAGE_COOKIE_REPLY and len(d) == COOKIE_REPLY_SIZE for s, d in pair.wire
    )
    assert EventKind.COOKIE_RECEIVED in _kinds(pair.a)
    assert pair.delivered_b == []
    pair.advance(6)  # a retransmits; the retry carries mac2
    assert len(pair.delivered_b) == 1
    assert pair.b.drops[Drop.COOKIE_REQUIRED] == 1


def test_cookie_reply_for_someone_else_is_rejected() -> None:
    pair = make_pair(load_threshold=1)
    pair.a.send(ipv4_packet("10.9.0.1", "10.9.0.2"), pair.clock.now)
    pair.pump(drop=lambda sender, _d: sender == "b")
    reply = bytearray(next(d for s, d in pair.wire if s == "b"))
    reply[40] ^= 1
    pair.a.receive(bytes(reply), EP_B, pair.clock.now)
    assert pair.a.drops[Drop.BAD_COOKIE_REPLY] == 1


def test_rate_limit_under_load() -> None:
    pair = make_pair(load_threshold=1)
    pair.a.send(ipv4_packet("10.9.0.1", "10.9.0.2"), pair.clock.now)
    pair.pump()  # a now holds b's cookie
    mac2_initiations: list[bytes] = []
    for _ in range(8):
        pair.clock.now += 5.5
        pair.a.tick(pair.clock.now)
        mac2_initiations += [d for d, _ in pair.a.take_outgoing() if d[0] == MESSAGE_INITIATION]
    assert all(d[-16:] != bytes(16) for d in mac2_initiations)
    # Replayed in a burst from one address, only the bucket's burst gets past the rate limiter.
    for datagram in mac2_initiations:
        pair.b.receive(datagram, EP_A, pair.clock.now)
    assert pair.b.drops[Drop.RATE_LIMITED] == len(mac2_initiations) - 4


def test_remove_peer_forgets_its_sessions() -> None:
    pair = make_pair()
    pair.a_to_b()
    data = next(d for s, d in pair.wire if s == "a" and d[0] == 4)
    peer = _first_peer(pair.b)
    pair.b.remove_peer(peer.public_key)
    pair.b.receive(data, EP_A, pair.clock.now)
    assert pair.b.drops[Drop.UNKNOWN_INDEX] == 1
    with pytest.raises(ValueError, match="no peer"):
        pair.b.remove_peer(peer.public_key)


def test_add_peer_rejects_duplicates_and_own_key() -> None:
    pair = make_pair()
    with pytest.raises(ValueError, match="already exists"):
        pair.a.add_peer(PeerConfig(pair.b.public_key))
    with pytest.raises(ValueError, match="own public key"):
        pair.a.add_peer(PeerConfig(pair.a.public_key))


def test_unknown_types_and_bad_sizes_are_counted() -> None:
    pair = make_pair()
    device = pair.b
    device.receive(b"", EP_A, 0)
    device.receive(bytes([1]) + bytes(40), EP_A, 0)
    device.receive(bytes([9, 0, 0, 0]) + bytes(60), EP_A, 0)
    device.receive(bytes([1, 0, 0, 1]) + bytes(144), EP_A, 0)  # reserved bytes must be zero
    device.receive(bytes([3, 0, 0, 0]) + bytes(61), EP_A, 0)
    assert device.drops[Drop.TOO_SHORT] == 1
    assert device.drops[Drop.BAD_SIZE] == 2
    assert device.drops[Drop.UNKNOWN_TYPE] == 2


def test_peer_status_reports_what_wg_show_needs() -> None:
    pair = make_pair(psk_a=True, psk_b=True, keepalive_a=25)
    pair.a_to_b()
    (status,) = pair.a.peer_status()
    assert status.public_key == pair.b.public_key.to_base64()
    assert status.has_preshared_key and status.persistent_keepalive == 25
    assert status.endpoint == EP_B and status.allowed_ips == ("10.9.0.2/32",)
    assert status.latest_handshake == pair.clock.wall()
    assert status.tx_bytes > 0 and status.rx_bytes > 0
    assert "redacted" in repr(pair.a.peers[0].preshared_key)


def test_sync_peers_keeps_sessions_of_peers_that_stay() -> None:
    pair = make_pair()
    pair.a_to_b()
    peer = _first_peer(pair.a)
    session = peer.keypairs.current
    rng = random.Random(11)
    newcomer = PrivateKey.generate(rng.randbytes).public_key()
    pair.a.sync_peers(
        [
            PeerConfig(
                pair.b.public_key,
                endpoint=EP_B,
                allowed_ips=(ip_network("10.9.0.0/24"),),
                persistent_keepalive=5,
            ),
            PeerConfig(newcomer, allowed_ips=(ip_network("10.9.1.0/24"),)),
        ]
    )
    assert _first_peer(pair.a) is peer and peer.keypairs.current is session
    assert [str(n) for n in pair.a.allowed_ips(peer)] == ["10.9.0.0/24"]
    assert peer.persistent_keepalive == 5 and len(pair.a.peers) == 2
    pair.a.send(ipv4_packet("10.9.0.1", "10.9.1.7"), pair.clock.now)
    assert pair.a.drops[Drop.NO_ROUTE] == 0  # routed to the newcomer (staged until it answers)
    pair.a.sync_peers([PeerConfig(newcomer, allowed_ips=(ip_network("10.9.0.0/16"),))])
    assert [p.public_key for p in pair.a.peers] == [newcomer]
    with pytest.raises(ValueError, match="own public key"):
        pair.a.sync_peers([PeerConfig(pair.a.public_key)])
