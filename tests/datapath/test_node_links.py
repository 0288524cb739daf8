"""cilium_host/cilium_net and cilium_vxlan in a real node namespace: created, checked by `ip`, converged."""

from __future__ import annotations

import os
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from ciphermesh.datapath.mtu import plan_mtus
from ciphermesh.datapath.netlink.links import (
    NodeLinks,
    ensure_node_links,
    remove_node_links,
    router_ip,
    vtep_mac,
)
from ciphermesh.lab import netns
from ciphermesh.lab.topology import NodePlan
from ciphermesh.rtnl.errors import DatapathError, DeviceMissingError
from tests.support.netns import MTUS, built_lab, ip_json

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


@pytest.fixture
def node() -> Iterator[NodePlan]:
    with built_lab(1) as plan:
        yield plan.nodes[0]


def test_router_ip_and_vtep_mac() -> None:
    assert router_ip(IPv4Network("10.0.1.0/24")) == IPv4Address("10.0.1.1")
    assert vtep_mac(IPv4Address("10.0.1.1")) == "0a:58:0a:00:01:01"
    with pytest.raises(ValueError, match="too small"):
        router_ip(IPv4Network("10.0.1.0/31"))


def test_links_as_ip_sees_them(node: NodePlan) -> None:
    spec = NodeLinks(node.ip, IPv4Network("10.0.1.0/24"), MTUS)
    with netns.iproute(node.netns) as ipr:
        assert ensure_node_links(ipr, spec)
        assert not ensure_node_links(ipr, spec)
    vxlan = ip_json(node.netns, "-d", "link", "show", "cilium_vxlan")[0]
    data = vxlan["linkinfo"]["info_data"]
    assert (data["id"], data["port"], data["local"], data["learning"]) == (2, 8472, str(node.ip), False)
    assert data["link"] == "eth0"
    assert vxlan["address"] == "0a:58:0a:00:01:01"
    assert vxlan["mtu"] == 1450 and "UP" in vxlan["flags"]
    host = ip_json(node.netns, "-d", "addr", "show", "cilium_host")[0]
    assert host["linkinfo"]["info_kind"] == "veth" and host["link"] == "cilium_net"
    assert [(a["local"], a["prefixlen"], a["scope"]) for a in host["addr_info"]] == [("10.0.1.1", 32, "link")]
    assert host["mtu"] == 1500 and "UP" in host["flags"]
    assert "UP" in ip_json(node.netns, "link", "show", "cilium_net")[0]["flags"]


def test_converges_from_a_wrong_state(node: NodePlan) -> None:
    for command in (
        ["ip", "link", "add", "cilium_host", "type", "bridge"],
        ["ip", "link", "add", "cilium_vxlan", "type", "vxlan", "id", "7", "dstport", "4789", "dev", "eth0"],
        ["ip", "addr", "add", "10.9.9.9/32", "dev", "cilium_host"],
    ):
        netns.run(node.netns, command)
    spec = NodeLinks(node.ip, IPv4Network("10.0.3.0/24"), plan_mtus("wireguard", device_mtu=1500))
    with netns.iproute(node.netns) as ipr:
        changes = ensure_node_links(ipr, spec)
        assert {"link cilium_host", "link cilium_vxlan"} <= set(changes.removed)
        assert not ensure_node_links(ipr, spec)
        moved = NodeLinks(node.ip, IPv4Network("10.0.4.0/24"), MTUS)
        changes = ensure_node_links(ipr, moved)
        assert changes.removed == ["address 10.0.3.1/32 dev cilium_host"]
        assert changes.added == [
            "address 10.0.4.1/32 dev cilium_host",
            "link cilium_vxlan address 0a:58:0a:00:04:01",
        ]
    info = ip_json(node.netns, "-d", "link", "show", "cilium_vxlan")[0]["linkinfo"]["info_data"]
    assert (info["id"], info["port"]) == (2, 8472)
    with netns.iproute(node.netns) as ipr:
        assert set(remove_node_links(ipr).removed) == {"link cilium_vxlan", "link cilium_host"}
        assert not remove_node_links(ipr)
    names = {link["ifname"] for link in ip_json(node.netns, "link", "show")}
    assert names == {"lo", "eth0"}


def test_missing_underlay_device_is_a_clear_error(node: NodePlan) -> None:
    spec = NodeLinks(node.ip, IPv4Network("10.0.1.0/24"), MTUS, device="eth9")
    with netns.iproute(node.netns) as ipr, pytest.raises(DeviceMissingError, match="device eth9 not found"):
        ensure_node_links(ipr, spec)


def test_kernel_refusal_names_the_object(node: NodePlan) -> None:
    jumbo = NodeLinks(node.ip, IPv4Network("10.0.1.0/24"), plan_mtus("ipsec", device_mtu=9000))
    with (
        netns.iproute(node.netns) as ipr,
        pytest.raises(DatapathError, match="set cilium_vxlan mtu 8950: Invalid argument"),
    ):
        ensure_node_links(ipr, jumbo)
