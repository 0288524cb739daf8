"""The lab's topology plan (pure): names, addresses, MACs and a subnet that avoids the host's routes."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from ciphermesh.lab.names import PodNameError, is_lab_netns, node_netns, pod_netns, underlay_netns
from ciphermesh.lab.state import LabNameError
from ciphermesh.lab.topology import TopologyError, choose_subnet, docker_mac, plan_topology


def test_plan_mimics_kind_on_docker() -> None:
    plan = plan_topology("cm", 3, IPv4Network("172.18.0.0/24"))
    assert plan.underlay_netns == "cm-underlay"
    assert plan.gateway == IPv4Address("172.18.0.1")
    assert [n.name for n in plan.nodes] == ["node-1", "node-2", "node-3"]
    assert [n.netns for n in plan.nodes] == ["cm-node-1", "cm-node-2", "cm-node-3"]
    assert [str(n.ip) for n in plan.nodes] == ["172.18.0.2", "172.18.0.3", "172.18.0.4"]
    assert plan.node("node-2").mac == "02:42:ac:12:00:03"
    assert plan == plan_topology("cm", 3, IPv4Network("172.18.0.0/24"))
    with pytest.raises(TopologyError, match="no node 'node-4'"):
        plan.node("node-4")


def test_docker_mac_is_locally_administered_unicast() -> None:
    mac = docker_mac(IPv4Address("172.19.0.10"))
    assert mac == "02:42:ac:13:00:0a"
    first = int(mac.split(":")[0], 16)
    assert first & 0b10 and not first & 0b1


def test_subnet_avoids_host_routes_but_ignores_default() -> None:
    taken = [
        IPv4Network("0.0.0.0/0"),
        IPv4Network("172.16.0.0/14"),
        IPv4Network("172.20.5.0/24"),
        IPv4Network("172.20.0.128/25"),
    ]
    assert choose_subnet(taken) == IPv4Network("172.21.0.0/24")
    assert choose_subnet([]) == IPv4Network("172.18.0.0/24")
    with pytest.raises(TopologyError, match="collides"):
        choose_subnet([IPv4Network("172.16.0.0/12")])


def test_the_underlay_avoids_the_pod_pool_and_is_refused_only_when_it_cannot() -> None:
    # Issue 10 item 4: a pool over 172.18.0.0/16 put node-1's pod CIDR on the node network itself.
    assert choose_subnet([], pod_pool=[IPv4Network("172.18.0.0/16")]) == IPv4Network("172.19.0.0/24")
    with pytest.raises(TopologyError) as refused:
        choose_subnet([], pod_pool=[IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12")])
    assert str(refused.value) == (
        "the pod CIDR pool 172.16.0.0/12 overlaps the node network 172.18.0.0/24 and every other node "
        "network the lab can use (172.19.0.0/24 to 172.31.0.0/24); give "
        "ipam.operator.clusterPoolIPv4PodCIDRList a range outside them"
    )
    # A lab that must keep its node network (one already built) is refused when the pool covers it.
    with pytest.raises(TopologyError, match=r"^the pod CIDR pool 172.20.0.0/16 overlaps the node network "
                       r"172.20.0.0/24; give"):
        choose_subnet([], candidates=[IPv4Network("172.20.0.0/24")], pod_pool=[IPv4Network("172.20.0.0/16")])


def test_bad_plans() -> None:
    with pytest.raises(TopologyError, match="0 nodes"):
        plan_topology("cm", 0, IPv4Network("172.18.0.0/24"))
    with pytest.raises(TopologyError, match="too small"):
        plan_topology("cm", 6, IPv4Network("172.18.0.0/29"))
    with pytest.raises(LabNameError):
        plan_topology("c-m", 1, IPv4Network("172.18.0.0/24"))


def test_lab_namespace_names_never_match_another_lab() -> None:
    assert underlay_netns("cm") == "cm-underlay"
    assert node_netns("cm", 2) == "cm-node-2"
    assert pod_netns("cm", "web-1") == "cm-pod-web-1"
    for name in ("cm-underlay", "cm-node-1", "cm-node-12", "cm-pod-a", "cm-pod-web-1"):
        assert is_lab_netns("cm", name)
    for name in (
        "cm2-node-1",
        "cm-node-01",
        "cm-node-",
        "cm-other",
        "cm-pod-",
        "cm-pod-A",
        "xcm-node-1",
        "cm",
    ):
        assert not is_lab_netns("cm", name)
    with pytest.raises(PodNameError):
        pod_netns("cm", "-bad")
    with pytest.raises(ValueError, match="count from 1"):
        node_netns("cm", 0)
