"""The agent's pure plan: peers, routes and per-tunnel SAs from node records and keys."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest

from ciphermesh.agent.plan import outbound_spi, plan
from ciphermesh.datapath.desired import DesiredDatapath, Mode
from ciphermesh.keys import derive_tunnel_key, parse_line
from ciphermesh.store.model import Node

KEY3 = parse_line("3+ rfc4106(gcm(aes)) 44434241343332312423222114131211f4f3f2f1 128")
KEY4 = parse_line("4+ rfc4106(gcm(aes)) 0102030405060708090a0b0c0d0e0f1011121314 128")
BOOT = ["5f616d5f-b237-aed6-4ac7-123456789abc", "5f616d5f-aed6-4ac7-b237-987654321abc",
        "11111111-2222-3333-4444-555555555555"]


def _node(i: int, *, key_id: int | None = 3, ready: bool = True) -> Node:
    return Node(
        name=f"node-{i}",
        node_ip=f"172.18.0.{i + 1}",
        boot_id=BOOT[i - 1],
        router_ip=f"10.0.{i}.1" if ready else None,
        pod_cidrs=(f"10.0.{i}.0/24",) if ready else (),
        key_id=key_id,
    )


def test_outbound_spi_needs_a_published_key_we_hold() -> None:
    keys = {3: KEY3, 4: KEY4}
    assert outbound_spi(4, None, keys) is None
    assert outbound_spi(4, 3, keys) == 3
    assert outbound_spi(4, 4, keys) == 4
    assert outbound_spi(4, 2, keys) is None


def test_ipsec_plan_derives_cilium_tunnel_keys() -> None:
    local, peer = _node(1), _node(2)
    nodes = [local, peer, _node(3, ready=False)]
    desired = plan(local, nodes, mode="ipsec", keys={3: KEY3}, current_key_id=3)
    assert desired.waiting == ("node-3: no router IP or pod CIDR yet",)
    assert [(p.node_ip, p.router_ip) for p in desired.vxlan_peers] == [
        (IPv4Address("172.18.0.3"), IPv4Address("10.0.2.1"))
    ]
    assert desired.engine is not None
    (engine_peer,) = desired.engine.peers
    assert engine_peer.pod_cidrs == (IPv4Network("10.0.2.0/24"),)
    assert engine_peer.out_spi == 3
    # The outbound key of node-1 is exactly the inbound key node-2 derives for the same tunnel.
    expected_out = derive_tunnel_key(KEY3, IPv4Address("10.0.1.1"), IPv4Address("10.0.2.1"), BOOT[0], BOOT[1])
    assert engine_peer.out_key == expected_out
    mirrored = plan(peer, [local, peer], mode="ipsec", keys={3: KEY3}, current_key_id=3)
    assert mirrored.engine is not None
    assert mirrored.engine.peers[0].in_keys[3] == expected_out


def test_peer_without_key_id_gets_no_outbound_sa() -> None:
    desired = plan(_node(1), [_node(2, key_id=None)], mode="ipsec", keys={3: KEY3}, current_key_id=3)
    assert desired.engine is not None
    assert desired.engine.peers[0].out_spi is None
    assert 3 in desired.engine.peers[0].in_keys
    assert desired.waiting == ("node-2: has not published an IPsec key ID we hold",)


def test_no_key_yet_means_no_sas_and_says_so() -> None:
    desired = plan(_node(1), [_node(2)], mode="ipsec", keys={}, current_key_id=None)
    assert desired.engine is not None
    assert desired.engine.peers[0].out_spi is None and not desired.engine.peers[0].in_keys
    assert "no valid IPsec key in the secret yet" in desired.waiting


def test_disabled_plan_has_routes_and_no_engine() -> None:
    desired = plan(_node(1), [_node(2), _node(3)], mode="disabled", keys={}, current_key_id=None)
    assert desired.engine is None
    assert [str(r.router_ip) for r in desired.remotes] == ["10.0.2.1", "10.0.3.1"]


def test_local_without_router_ip_is_an_error() -> None:
    with pytest.raises(ValueError, match="no router IP"):
        plan(_node(1, ready=False), [], mode="disabled", keys={}, current_key_id=None)


def _host_plan(
    local: Node, *peers: Node, node_encryption: bool = True, mode: Mode = "ipsec"
) -> DesiredDatapath:
    return plan(local, [local, *peers], mode=mode, keys={3: KEY3}, current_key_id=3,
                node_encryption=node_encryption)


def test_node_encryption_routes_peers_node_ips_through_the_engine() -> None:
    desired = _host_plan(_node(1), _node(2), replace(_node(3), encryption={"nodeEncryption": False}))
    # node-3 opted out (Cilium's OptedOut): its host traffic stays in clear, its pods stay encrypted.
    assert desired.node_peers == (IPv4Address("172.18.0.3"),)
    assert desired.blocked_nodes == ()
    assert desired.engine is not None
    two, three = desired.engine.peers
    assert two.pod_cidrs == (IPv4Network("10.0.2.0/24"), IPv4Network("172.18.0.3/32"))
    assert three.pod_cidrs == (IPv4Network("10.0.3.0/24"),)
    # Every peer's node IP is accepted from it: its host's replies to our pods come through its engine.
    assert two.sources == (IPv4Network("172.18.0.3/32"),) and three.sources == (IPv4Network("172.18.0.4/32"),)


def test_without_node_encryption_no_host_route() -> None:
    desired = _host_plan(_node(1), _node(2), node_encryption=False)
    assert desired.node_peers == () and desired.blocked_nodes == ()
    assert desired.engine is not None
    assert desired.engine.peers[0].pod_cidrs == (IPv4Network("10.0.2.0/24"),)
    assert _host_plan(_node(1), _node(2), mode="disabled").node_peers == ()


def test_a_peer_that_cannot_be_encrypted_holds_its_host_traffic_too() -> None:
    other_mode = replace(_node(2), encryption={"mode": "wireguard"})
    desired = _host_plan(_node(1), other_mode, _node(3))
    assert desired.blocked == (IPv4Network("10.0.2.0/24"),)
    assert desired.blocked_nodes == (IPv4Address("172.18.0.3"),)
    assert desired.node_peers == (IPv4Address("172.18.0.4"),)
