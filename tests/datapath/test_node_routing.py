"""Node encryption's routing in a real node: host traffic to peer node IPs into the TUN, the engines' not."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ciphermesh.datapath.netlink.node_routes import reconcile_node_routing, remove_node_routing
from ciphermesh.lab import netns
from ciphermesh.lab.topology import TopologyPlan
from ciphermesh.rtnl.errors import DeviceMissingError
from ciphermesh.rtnl.ownership import IPSEC_ENCRYPTED_MARK, NODE_TABLE, WIREGUARD_MARK
from tests.datapath.test_routing import route_get
from tests.support.netns import MTUS, TUN, built_lab, ip_json, wire_nodes

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


@pytest.fixture
def lab() -> Iterator[TopologyPlan]:
    with built_lab(3) as plan:
        wire_nodes(plan)
        yield plan


def reconcile(lab: TopologyPlan, *, blocked: bool = False, tun: str = TUN) -> list[str]:
    node1, node2, node3 = lab.nodes
    with netns.iproute(node1.netns) as ipr:
        changes = reconcile_node_routing(ipr, tun=tun, local_node_ip=node1.ip, peers=[node2.ip],
                                         blocked=[node3.ip] if blocked else [], mtu=MTUS.pod)
    return changes.added + changes.removed


def test_host_traffic_goes_into_the_tun_and_the_engines_own_does_not(lab: TopologyPlan) -> None:
    node1, node2, node3 = lab.nodes
    name, peer = node1.netns, str(node2.ip)
    assert route_get(name, peer, "ipproto", "icmp") == "eth0"
    reconcile(lab)
    assert route_get(name, peer, "ipproto", "icmp") == TUN
    assert route_get(name, peer, "ipproto", "tcp", "dport", "22") == TUN
    routed = ip_json(name, "route", "get", peer)[0]
    assert routed["prefsrc"] == str(node1.ip)
    # What the engines send carries their mark (VXLAN's outer packet inherits the ESP packet's).
    for mark in (IPSEC_ENCRYPTED_MARK, WIREGUARD_MARK):
        assert route_get(name, peer, "mark", hex(mark), "ipproto", "udp", "dport", "8472") == "eth0"
    # A node without node encryption on our side is not touched.
    assert route_get(name, str(node3.ip), "ipproto", "icmp") == "eth0"
    assert reconcile(lab) == []  # converged


def test_blocked_peer_and_missing_tun_fail_closed(lab: TopologyPlan) -> None:
    name, node3 = lab.nodes[0].netns, str(lab.nodes[2].ip)
    reconcile(lab, blocked=True)
    assert "No route to host" in route_get(name, node3, "ipproto", "icmp") or "unreachable" in route_get(
        name, node3, "ipproto", "icmp"
    )
    with pytest.raises(DeviceMissingError, match="cm_gone"):
        reconcile(lab, tun="cm_gone")
    peer = str(lab.nodes[1].ip)
    assert route_get(name, peer, "ipproto", "icmp") != "eth0"


def test_remove_restores_the_main_table(lab: TopologyPlan) -> None:
    name, peer = lab.nodes[0].netns, str(lab.nodes[1].ip)
    reconcile(lab, blocked=True)
    with netns.iproute(name) as ipr:
        removed = remove_node_routing(ipr)
        assert removed.removed and not removed.added
        assert not remove_node_routing(ipr)  # idempotent
    assert route_get(name, peer, "ipproto", "icmp") == "eth0"
    assert ip_json(name, "route", "show", "table", str(NODE_TABLE)) == []
    assert not [r for r in ip_json(name, "rule", "show") if r.get("table") == str(NODE_TABLE)]
