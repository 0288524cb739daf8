"""Flannel-style peers on cilium_vxlan: neighbour + FDB + /32 route per peer, reconciled from any state."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from ciphermesh.datapath.desired import VxlanPeer
from ciphermesh.datapath.netlink.links import NodeLinks, ensure_node_links
from ciphermesh.datapath.netlink.vxlan_peers import reconcile_vxlan_peers
from ciphermesh.lab import netns
from ciphermesh.lab.topology import NodePlan
from ciphermesh.rtnl.errors import DeviceMissingError
from ciphermesh.rtnl.ownership import ESP_TABLE, PROTO_VXLAN_PEER
from tests.support.netns import MTUS, built_lab, ip_json

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

LOCAL = IPv4Address("10.0.1.1")
PEER2 = VxlanPeer(IPv4Address("172.30.0.3"), IPv4Address("10.0.2.1"))
PEER3 = VxlanPeer(IPv4Address("172.30.0.4"), IPv4Address("10.0.3.1"))


@pytest.fixture
def node() -> Iterator[NodePlan]:
    with built_lab(1) as plan:
        node = plan.nodes[0]
        with netns.iproute(node.netns) as ipr:
            ensure_node_links(ipr, NodeLinks(node.ip, IPv4Network("10.0.1.0/24"), MTUS))
        yield node


def kernel_view(name: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]], set[tuple[str, str, str]]]:
    """(neighbours, FDB remotes, ESP-table routes) as iproute2's `ip` and `bridge` print them."""
    neigh = {
        (n["dst"], n["lladdr"])
        for n in ip_json(name, "neigh", "show", "dev", "cilium_vxlan")
        if "PERMANENT" in n.get("state", [])
    }
    fdb_out = netns.run(name, ["bridge", "-j", "fdb", "show", "dev", "cilium_vxlan"]).stdout
    fdb = {(f["mac"], f["dst"]) for f in json.loads(fdb_out) if "dst" in f}
    # `table all`: iproute2 fails to dump a table that has no route left.
    routes = {
        (r["dst"], r["dev"], r["prefsrc"])
        for r in ip_json(name, "route", "show", "table", "all", "proto", str(PROTO_VXLAN_PEER))
        if r.get("table") == str(ESP_TABLE)
    }
    return neigh, fdb, routes


def test_peers_programmed_as_flannel_does(node: NodePlan) -> None:
    with netns.iproute(node.netns) as ipr:
        changes = reconcile_vxlan_peers(ipr, local_router_ip=LOCAL, peers=[PEER2, PEER3], table=ESP_TABLE)
        assert len(changes.added) == 6 and not changes.removed
        assert not reconcile_vxlan_peers(ipr, local_router_ip=LOCAL, peers=[PEER3, PEER2], table=ESP_TABLE)
    neigh, fdb, routes = kernel_view(node.netns)
    assert neigh == {("10.0.2.1", "0a:58:0a:00:02:01"), ("10.0.3.1", "0a:58:0a:00:03:01")}
    assert fdb == {("0a:58:0a:00:02:01", "172.30.0.3"), ("0a:58:0a:00:03:01", "172.30.0.4")}
    assert routes == {("10.0.2.1", "cilium_vxlan", "10.0.1.1"), ("10.0.3.1", "cilium_vxlan", "10.0.1.1")}
    assert not [r for r in ip_json(node.netns, "route", "show") if r["dst"] in ("10.0.2.1", "10.0.3.1")]


def test_converges_from_a_half_applied_and_stale_state(node: NodePlan) -> None:
    with netns.iproute(node.netns) as ipr:
        reconcile_vxlan_peers(ipr, local_router_ip=LOCAL, peers=[PEER2, PEER3], table=ESP_TABLE)
    for command in (
        ["bridge", "fdb", "del", "0a:58:0a:00:02:01", "dev", "cilium_vxlan", "dst", "172.30.0.3", "self"],
        [
            "bridge",
            "fdb",
            "replace",
            "0a:58:0a:00:03:01",
            "dev",
            "cilium_vxlan",
            "dst",
            "172.30.0.99",
            "self",
        ],
        # Default (flooding) entries with several remotes, which peers programmed per MAC never use.
        ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "cilium_vxlan", "dst", "172.30.0.50", "self"],
        ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "cilium_vxlan", "dst", "172.30.0.51", "self"],
        [
            "ip",
            "neigh",
            "replace",
            "10.0.3.1",
            "lladdr",
            "0a:58:00:00:00:01",
            "dev",
            "cilium_vxlan",
            "nud",
            "permanent",
        ],
        [
            "ip",
            "neigh",
            "add",
            "10.0.9.1",
            "lladdr",
            "0a:58:0a:00:09:01",
            "dev",
            "cilium_vxlan",
            "nud",
            "permanent",
        ],
        [
            "ip",
            "route",
            "add",
            "10.0.9.1",
            "dev",
            "cilium_vxlan",
            "table",
            str(ESP_TABLE),
            "proto",
            str(PROTO_VXLAN_PEER),
        ],
        [
            "ip",
            "route",
            "add",
            "10.0.8.0/24",
            "dev",
            "cilium_vxlan",
            "table",
            str(ESP_TABLE),
            "proto",
            "static",
        ],
    ):
        netns.run(node.netns, command)
    with netns.iproute(node.netns) as ipr:
        changes = reconcile_vxlan_peers(ipr, local_router_ip=LOCAL, peers=[PEER2, PEER3], table=ESP_TABLE)
        assert set(changes.removed) == {
            "route 10.0.9.1/32 table 50",
            "fdb 0a:58:0a:00:03:01 dst 172.30.0.99 dev cilium_vxlan",
            "fdb 00:00:00:00:00:00 dst 172.30.0.50 dev cilium_vxlan",
            "fdb 00:00:00:00:00:00 dst 172.30.0.51 dev cilium_vxlan",
            "neigh 10.0.9.1 lladdr 0a:58:0a:00:09:01 dev cilium_vxlan",
        }
        assert set(changes.added) == {
            "fdb 0a:58:0a:00:02:01 dst 172.30.0.3 dev cilium_vxlan self permanent",
            "fdb 0a:58:0a:00:03:01 dst 172.30.0.4 dev cilium_vxlan self permanent",
            "neigh 10.0.3.1 lladdr 0a:58:0a:00:03:01 dev cilium_vxlan permanent",
        }
        assert not reconcile_vxlan_peers(ipr, local_router_ip=LOCAL, peers=[PEER2, PEER3], table=ESP_TABLE)
    neigh, fdb, routes = kernel_view(node.netns)
    assert neigh == {("10.0.2.1", "0a:58:0a:00:02:01"), ("10.0.3.1", "0a:58:0a:00:03:01")}
    assert fdb == {("0a:58:0a:00:02:01", "172.30.0.3"), ("0a:58:0a:00:03:01", "172.30.0.4")}
    assert len(routes) == 2
    # A route we do not own stays.
    assert [
        r["dst"] for r in ip_json(node.netns, "route", "show", "table", str(ESP_TABLE), "proto", "static")
    ] == ["10.0.8.0/24"]


def test_peers_leave(node: NodePlan) -> None:
    moved = VxlanPeer(IPv4Address("172.30.0.5"), PEER2.router_ip)
    with netns.iproute(node.netns) as ipr:
        reconcile_vxlan_peers(ipr, local_router_ip=LOCAL, peers=[PEER2, PEER3], table=ESP_TABLE)
        changes = reconcile_vxlan_peers(ipr, local_router_ip=LOCAL, peers=[moved], table=ESP_TABLE)
        assert "fdb 0a:58:0a:00:02:01 dst 172.30.0.5 dev cilium_vxlan self permanent" in changes.added
    neigh, fdb, routes = kernel_view(node.netns)
    assert neigh == {("10.0.2.1", "0a:58:0a:00:02:01")}
    assert fdb == {("0a:58:0a:00:02:01", "172.30.0.5")}
    assert routes == {("10.0.2.1", "cilium_vxlan", "10.0.1.1")}
    with netns.iproute(node.netns) as ipr:
        reconcile_vxlan_peers(ipr, local_router_ip=LOCAL, peers=[], table=ESP_TABLE)
    assert kernel_view(node.netns) == (set(), set(), set())


def test_bad_peers_are_refused(node: NodePlan) -> None:
    with netns.iproute(node.netns) as ipr:
        with pytest.raises(ValueError, match="this node's own"):
            reconcile_vxlan_peers(
                ipr, local_router_ip=LOCAL, peers=[VxlanPeer(PEER2.node_ip, LOCAL)], table=ESP_TABLE
            )
        clash = VxlanPeer(PEER3.node_ip, PEER2.router_ip)
        with pytest.raises(ValueError, match=r"claimed by nodes 172\.30\.0\.3 and 172\.30\.0\.4"):
            reconcile_vxlan_peers(ipr, local_router_ip=LOCAL, peers=[PEER2, clash], table=ESP_TABLE)
        with pytest.raises(DeviceMissingError, match="vx9"):
            reconcile_vxlan_peers(ipr, local_router_ip=LOCAL, peers=[PEER2], table=ESP_TABLE, vxlan="vx9")
    assert kernel_view(node.netns) == (set(), set(), set())
