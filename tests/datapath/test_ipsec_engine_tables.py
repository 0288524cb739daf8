"""The engine's lookup tables without sockets: two nodes' tables hand packets to each other directly."""

from __future__ import annotations

import uuid
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, IPSecIntegrityError, SecurityAssociation

from ciphermesh.datapath.desired import IPsecEngineState, IPsecPeer
from ciphermesh.datapath.userspace.ipsec.drops import new_drop_counts
from ciphermesh.datapath.userspace.ipsec.tables import IPsecTables, SAParams
from ciphermesh.esp import Drop, OutboundSA, cipher_for, wrap_ipv4
from ciphermesh.keys import KeyLine, derive_tunnel_key, generate_line

ROUTER_A = IPv4Address("10.0.1.1")
ROUTER_B = IPv4Address("10.0.2.1")
ROUTER_C = IPv4Address("10.0.3.1")
CIDR_A = IPv4Network("10.0.1.0/24")
CIDR_B = IPv4Network("10.0.2.0/24")
CIDR_C = IPv4Network("10.0.3.0/24")
CIDR_B6 = IPv6Network("fd00:0:0:2::/64")
BOOT = {ROUTER_A: str(uuid.uuid4()), ROUTER_B: str(uuid.uuid4()), ROUTER_C: str(uuid.uuid4())}


def tunnel_key(line: KeyLine, src: IPv4Address, dst: IPv4Address) -> KeyLine:
    return derive_tunnel_key(line, src, dst, BOOT[src], BOOT[dst])


def peer(
    local: IPv4Address,
    remote: IPv4Address,
    cidrs: tuple[IPv4Network | IPv6Network, ...],
    *lines: KeyLine,
    out: KeyLine | None = None,
) -> IPsecPeer:
    sending = out or lines[-1]
    return IPsecPeer(
        router_ip=remote,
        pod_cidrs=cidrs,
        out_spi=sending.key_id,
        out_key=tunnel_key(sending, local, remote),
        in_keys={line.key_id: tunnel_key(line, remote, local) for line in lines},
    )


def tables_for(state: IPsecEngineState, previous: IPsecTables | None = None) -> IPsecTables:
    return IPsecTables.build(state, SAParams(), previous or IPsecTables.empty(new_drop_counts()))


def inner(src: str, dst: str, payload: bytes = b"hello") -> bytes:
    if ":" in dst:
        return bytes(IPv6(src=src, dst=dst) / UDP(sport=1000, dport=2000) / payload)
    return bytes(IP(src=src, dst=dst) / UDP(sport=1000, dport=2000) / payload)


@pytest.fixture
def line() -> KeyLine:
    return generate_line(key_id=3)


@pytest.fixture
def pair(line: KeyLine) -> tuple[IPsecTables, IPsecTables]:
    a = IPsecEngineState(ROUTER_A, (peer(ROUTER_A, ROUTER_B, (CIDR_B, CIDR_B6), line),))
    b = IPsecEngineState(ROUTER_B, (peer(ROUTER_B, ROUTER_A, (CIDR_A,), line),))
    return tables_for(a), tables_for(b)


def send(sender: IPsecTables, receiver: IPsecTables, packet: bytes) -> bytes | None:
    """Seal on one node, wrap as the kernel does, open on the other; the inner packet or None."""
    sealed = sender.seal(packet)
    assert sealed is not None
    path, esp = sealed
    opened = receiver.open(
        wrap_ipv4(IPv4Address(sender.ancillary[0][2][4:8]), IPv4Address(path.sockaddr[0]), esp)
    )
    return None if opened is None else opened[1]


def test_packets_cross_both_ways_and_to_the_router_ip(pair: tuple[IPsecTables, IPsecTables]) -> None:
    a, b = pair
    for packet in (inner("10.0.1.5", "10.0.2.5"), inner("10.0.1.1", "10.0.2.1", b"x" * 1300)):
        assert send(a, b, packet) == packet
    reply = inner("10.0.2.5", "10.0.1.5")
    assert send(b, a, reply) == reply
    assert a.paths[0].sockaddr == ("10.0.2.1", 0)


def test_ipv6_inner_packets_route_by_the_ipv6_prefix(line: KeyLine) -> None:
    a = tables_for(IPsecEngineState(ROUTER_A, (peer(ROUTER_A, ROUTER_B, (CIDR_B6,), line),)))
    b = tables_for(
        IPsecEngineState(ROUTER_B, (peer(ROUTER_B, ROUTER_A, (ip_network("fd00:0:0:1::/64"),), line),))
    )
    packet = inner("fd00:0:0:1::5", "fd00:0:0:2::5")
    assert send(a, b, packet) == packet


def test_the_wire_format_is_esp_that_scapy_decrypts_with_the_derived_key(
    pair: tuple[IPsecTables, IPsecTables], line: KeyLine
) -> None:
    a, _ = pair
    packet = inner("10.0.1.5", "10.0.2.5", b"interop")
    sealed = a.seal(packet)
    assert sealed is not None
    outer = IP(wrap_ipv4(ROUTER_A, ROUTER_B, sealed[1]))
    assert outer[ESP].spi == 3 and outer[ESP].seq == 1
    key = tunnel_key(line, ROUTER_A, ROUTER_B).material
    sa = SecurityAssociation(
        ESP,
        spi=3,
        crypt_algo="AES-GCM",
        crypt_key=key.key.reveal(),  # type: ignore[union-attr]
        tunnel_header=IP(src=str(ROUTER_A), dst=str(ROUTER_B)),
        esn_en=True,
    )
    decrypted = sa.decrypt(outer.copy())
    assert bytes(decrypted) == packet
    wrong = SecurityAssociation(
        ESP,
        spi=3,
        crypt_algo="AES-GCM",
        crypt_key=tunnel_key(line, ROUTER_B, ROUTER_A).material.key.reveal(),  # type: ignore[union-attr]
        tunnel_header=IP(src=str(ROUTER_A), dst=str(ROUTER_B)),
        esn_en=True,
    )
    with pytest.raises(IPSecIntegrityError):
        wrong.decrypt(outer.copy())


def test_outbound_drops_are_counted_and_nothing_is_sent(pair: tuple[IPsecTables, IPsecTables]) -> None:
    a, _ = pair
    assert a.seal(inner("10.0.1.5", "10.0.9.5")) is None
    assert a.seal(inner("fd00:0:0:1::5", "fd00:0:0:9::5")) is None
    assert a.counts["XfrmOutNoStates"] == 2
    for garbage in (b"", b"\x45" + bytes(10), b"\x00" * 40, b"\x60" + bytes(20)):
        assert a.seal(garbage) is None
    assert a.counts["XfrmOutStateModeError"] == 4


def test_the_engines_own_esp_coming_back_from_the_tun_is_not_sealed_again(
    pair: tuple[IPsecTables, IPsecTables],
) -> None:
    a, _ = pair
    sealed = a.seal(inner("10.0.1.5", "10.0.2.5"))
    assert sealed is not None
    assert a.seal(wrap_ipv4(ROUTER_A, ROUTER_B, sealed[1])) is None
    assert a.counts["EngineOutLoop"] == 1
    from_a_pod = wrap_ipv4(IPv4Address("10.0.1.5"), IPv4Address("10.0.2.5"), sealed[1])
    assert a.seal(from_a_pod) is not None  # a pod's own ESP is just traffic


def test_a_peer_without_an_outbound_sa_gets_nothing(line: KeyLine) -> None:
    no_out = IPsecPeer(ROUTER_B, (CIDR_B,), None, None, {3: tunnel_key(line, ROUTER_B, ROUTER_A)})
    a = tables_for(IPsecEngineState(ROUTER_A, (no_out,)))
    assert a.seal(inner("10.0.1.5", "10.0.2.5")) is None
    assert a.counts["XfrmOutNoStates"] == 1


def test_inbound_drops_land_on_their_counters(pair: tuple[IPsecTables, IPsecTables]) -> None:
    a, b = pair
    packet = inner("10.0.1.5", "10.0.2.5")
    sealed = a.seal(packet)
    assert sealed is not None
    esp = sealed[1]
    wire = wrap_ipv4(ROUTER_A, ROUTER_B, esp)
    assert b.open(wire) is not None
    assert b.open(wire) is None  # replayed
    assert b.paths[0].in_sas[3].counters["XfrmInStateSeqError"] == 1
    unknown_spi = wrap_ipv4(ROUTER_A, ROUTER_B, b"\x00\x00\x00\x63" + esp[4:])
    assert b.open(unknown_spi) is None
    assert b.sad.counters["XfrmInNoStates"] == 1
    from_elsewhere = wrap_ipv4(ROUTER_C, ROUTER_B, esp)
    assert b.open(from_elsewhere) is None
    assert b.sad.counters["XfrmInNoStates"] == 2
    assert b.open(b"\x45\x00" + bytes(6)) is None
    assert b.counts["XfrmInHdrError"] == 1


def test_an_inner_source_outside_the_peers_prefixes_is_a_template_mismatch(line: KeyLine) -> None:
    a_state = IPsecEngineState(ROUTER_A, (peer(ROUTER_A, ROUTER_B, (CIDR_B,), line),))
    b_state = IPsecEngineState(
        ROUTER_B,
        (peer(ROUTER_B, ROUTER_A, (CIDR_A,), line), peer(ROUTER_B, ROUTER_C, (CIDR_C,), line)),
    )
    a, b = tables_for(a_state), tables_for(b_state)
    assert send(a, b, inner("10.0.9.9", "10.0.2.5")) is None  # nobody's prefix
    assert send(a, b, inner("10.0.3.7", "10.0.2.5")) is None  # node C's prefix, sent by A
    assert b.counts["XfrmInTmplMismatch"] == 2
    assert send(a, b, inner("10.0.1.7", "10.0.2.5")) is not None


def test_rebuilding_keeps_unchanged_sas_and_their_sequence_numbers(line: KeyLine) -> None:
    state = IPsecEngineState(ROUTER_A, (peer(ROUTER_A, ROUTER_B, (CIDR_B,), line),))
    first = tables_for(state)
    for _ in range(5):
        assert first.seal(inner("10.0.1.5", "10.0.2.5")) is not None
    again = tables_for(state, first)
    assert again.paths[0].out_sa is first.paths[0].out_sa
    assert again.paths[0].in_sas[3] is first.paths[0].in_sas[3]
    assert again.paths[0].stats is first.paths[0].stats
    sealed = again.seal(inner("10.0.1.5", "10.0.2.5"))
    assert sealed is not None and sealed[0].out_sa is not None and sealed[0].out_sa.seq == 6


def test_a_changed_key_replaces_the_sa_and_a_removed_peer_gets_nothing(line: KeyLine) -> None:
    first = tables_for(IPsecEngineState(ROUTER_A, (peer(ROUTER_A, ROUTER_B, (CIDR_B,), line),)))
    first.seal(inner("10.0.1.5", "10.0.2.5"))
    same_spi_new_key = generate_line(key_id=line.key_id)  # as after B's reboot: new boot ID, new keys
    rebooted = tables_for(
        IPsecEngineState(ROUTER_A, (peer(ROUTER_A, ROUTER_B, (CIDR_B,), same_spi_new_key),)), first
    )
    new_out, new_in = rebooted.paths[0].out_sa, rebooted.paths[0].in_sas[3]
    assert new_out is not None and new_out is not first.paths[0].out_sa and new_out.seq == 0
    assert new_in is not first.paths[0].in_sas[3] and new_in.max_seq == 0
    gone = tables_for(IPsecEngineState(ROUTER_A, ()), rebooted)
    assert gone.paths == () and gone.sad.get(ROUTER_B, ROUTER_A, 3) is None
    assert gone.seal(inner("10.0.1.5", "10.0.2.5")) is None


def test_a_peer_removed_and_added_again_with_the_same_keys_goes_on_where_it_stopped(line: KeyLine) -> None:
    """Issue 10: B's lease expired while A was stopped; A kept its window, so B must not start at 1 again."""
    a_state = IPsecEngineState(ROUTER_A, (peer(ROUTER_A, ROUTER_B, (CIDR_B,), line),))
    b_state = IPsecEngineState(ROUTER_B, (peer(ROUTER_B, ROUTER_A, (CIDR_A,), line),))
    a, b = tables_for(a_state), tables_for(b_state)
    for n in range(2000):  # past the 1024-packet window: a restart at 1 would be dropped as replays
        assert send(b, a, inner("10.0.2.5", "10.0.1.5", n.to_bytes(2, "big"))) is not None
        assert send(a, b, inner("10.0.1.5", "10.0.2.5", n.to_bytes(2, "big"))) is not None
    b_without_a = tables_for(IPsecEngineState(ROUTER_B, ()), b)
    assert b_without_a.seal(inner("10.0.2.5", "10.0.1.5")) is None
    b_again = tables_for(b_state, b_without_a)
    out_sa = b_again.paths[0].out_sa
    assert out_sa is not None and out_sa.seq == 2000
    back = inner("10.0.2.5", "10.0.1.5", b"back")
    assert send(b_again, a, back) == back
    assert a.paths[0].in_sas[3].counters[Drop.XfrmInStateSeqError] == 0
    # B's window came back too: A's packets go on, and one B had already opened is still a replay.
    first_from_a = a.seal(inner("10.0.1.5", "10.0.2.5"))
    assert first_from_a is not None
    assert send(a, b_again, inner("10.0.1.5", "10.0.2.5")) is not None
    assert b_again.open(wrap_ipv4(ROUTER_A, ROUTER_B, first_from_a[1])) is not None
    assert b_again.open(wrap_ipv4(ROUTER_A, ROUTER_B, first_from_a[1])) is None
    assert b_again.paths[0].in_sas[3].counters[Drop.XfrmInStateSeqError] == 1


def test_a_key_id_that_wraps_back_gets_fresh_sas_only_with_fresh_material(line: KeyLine) -> None:
    """15 wraps to 1: a new key under an old SPI is a new SA both ends; the old key again goes on."""
    a = tables_for(IPsecEngineState(ROUTER_A, (peer(ROUTER_A, ROUTER_B, (CIDR_B,), line),)))
    b = tables_for(IPsecEngineState(ROUTER_B, (peer(ROUTER_B, ROUTER_A, (CIDR_A,), line),)))
    for _ in range(3):
        assert send(a, b, inner("10.0.1.5", "10.0.2.5")) is not None
    other = generate_line(key_id=line.key_id)
    a = tables_for(IPsecEngineState(ROUTER_A, (peer(ROUTER_A, ROUTER_B, (CIDR_B,), other),)), a)
    b = tables_for(IPsecEngineState(ROUTER_B, (peer(ROUTER_B, ROUTER_A, (CIDR_A,), other),)), b)
    assert send(a, b, inner("10.0.1.5", "10.0.2.5")) is not None
    sealed = a.paths[0].out_sa
    assert sealed is not None and sealed.seq == 1
    # The ledger keeps one key per (direction, addresses, SPI): going back to the first is a new SA.
    a = tables_for(IPsecEngineState(ROUTER_A, (peer(ROUTER_A, ROUTER_B, (CIDR_B,), line),)), a)
    b = tables_for(IPsecEngineState(ROUTER_B, (peer(ROUTER_B, ROUTER_A, (CIDR_A,), line),)), b)
    assert send(a, b, inner("10.0.1.5", "10.0.2.5")) is not None
    assert len(a.ledger) == 2 and len(b.ledger) == 2


def test_every_counter_stays_in_the_totals_while_sas_come_and_go(line: KeyLine) -> None:
    state = IPsecEngineState(ROUTER_A, (peer(ROUTER_A, ROUTER_B, (CIDR_B,), line),))
    a = tables_for(state)
    a.seal(inner("10.0.1.5", "10.0.2.5"))
    for _ in range(3):
        a = tables_for(state, tables_for(IPsecEngineState(ROUTER_A, ()), a))
        a.seal(inner("10.0.1.5", "10.0.2.5"))
    assert sum(c.packets_out for c in a.ledger.counters()) == 4
    new_key = generate_line(key_id=3)
    a = tables_for(IPsecEngineState(ROUTER_A, (peer(ROUTER_A, ROUTER_B, (CIDR_B,), new_key),)), a)
    assert a.ledger.retired.packets_out == 4 and sum(c.packets_out for c in a.ledger.counters()) == 0


def test_rotation_holds_two_inbound_spis_and_switches_outbound_per_peer() -> None:
    old, new = generate_line(key_id=3), generate_line(key_id=4)
    a_rotating = tables_for(
        IPsecEngineState(ROUTER_A, (peer(ROUTER_A, ROUTER_B, (CIDR_B,), old, new, out=old),))
    )
    b_old = tables_for(IPsecEngineState(ROUTER_B, (peer(ROUTER_B, ROUTER_A, (CIDR_A,), old),)))
    b_new = tables_for(IPsecEngineState(ROUTER_B, (peer(ROUTER_B, ROUTER_A, (CIDR_A,), old, new, out=new),)))
    assert a_rotating.keys_in_use() == 3
    reply = inner("10.0.2.5", "10.0.1.5")
    assert send(b_old, a_rotating, reply) == reply
    assert send(b_new, a_rotating, reply) == reply
    assert sorted(a_rotating.paths[0].in_sas) == [3, 4]


def test_sequence_exhaustion_is_counted_and_never_wraps(pair: tuple[IPsecTables, IPsecTables]) -> None:
    a, _ = pair
    path = a.paths[0]
    assert path.out_sa is not None
    material = path.peer.out_key.material  # type: ignore[union-attr]
    path.out_sa = OutboundSA(3, cipher_for(material), esn=False, first_seq=0xFFFFFFFF)
    assert a.seal(inner("10.0.1.5", "10.0.2.5")) is not None
    assert a.seal(inner("10.0.1.5", "10.0.2.5")) is None
    assert path.out_sa.exhausted and path.out_sa.counters["XfrmOutStateSeqError"] == 1


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda k: IPsecEngineState(ROUTER_A, (peer(ROUTER_A, ROUTER_A, (CIDR_B,), k),)), "local router IP"),
        (
            lambda k: IPsecEngineState(
                ROUTER_A,
                (
                    peer(ROUTER_A, ROUTER_B, (CIDR_B,), k),
                    peer(ROUTER_A, ROUTER_C, (ip_network("10.0.2.128/25"),), k),
                ),
            ),
            "overlaps",
        ),
        (
            lambda k: IPsecEngineState(
                ROUTER_A, (peer(ROUTER_A, ROUTER_B, (CIDR_B,), k), peer(ROUTER_A, ROUTER_B, (CIDR_C,), k))
            ),
            "appears twice",
        ),
        (lambda k: IPsecPeer(ROUTER_B, (CIDR_B,), 3, None, {}), "together"),
        (lambda k: IPsecPeer(ROUTER_B, (CIDR_B,), None, None, {0: k}), "SPI 0"),
        (lambda k: IPsecPeer(ROUTER_B, (), None, None, {}), "no pod CIDRs"),
        (
            lambda k: IPsecPeer(ip_network("fd00::/64").network_address, (CIDR_B,), None, None, {}),
            "IPv4 only",
        ),
    ],
)
def test_bad_desired_states_are_refused_with_one_line(build, message: str, line: KeyLine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message) as caught:
        build(line)
    assert "\n" not in str(caught.value)


def test_a_peers_node_ip_is_accepted_as_a_source_not_routed_to(line: KeyLine) -> None:
    node_a = IPv4Network("172.18.0.2/32")
    a_state = IPsecEngineState(ROUTER_A, (peer(ROUTER_A, ROUTER_B, (CIDR_B,), line),))
    b_peer = peer(ROUTER_B, ROUTER_A, (CIDR_A,), line)
    b_state = IPsecEngineState(ROUTER_B, (replace(b_peer, sources=(node_a,)),))
    a, b = tables_for(a_state), tables_for(b_state)
    # Node A's host answering a pod of B: through A's engine, from A's node IP.
    assert send(a, b, inner("172.18.0.2", "10.0.2.5")) == inner("172.18.0.2", "10.0.2.5")
    assert send(a, b, inner("172.18.0.9", "10.0.2.5")) is None  # another address: a mismatch
    assert b.counts["XfrmInTmplMismatch"] == 1
    # A source is not a route: B does not send to A's node IP through the engine.
    assert b.seal(inner("10.0.2.5", "172.18.0.2")) is None
