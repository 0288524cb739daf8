"""The engine's routing in a real node: the kernel's own route lookups say where each packet would go."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from ciphermesh.datapath.desired import RemoteNode
from ciphermesh.datapath.netlink.engine_routes import reconcile_engine_routing, remove_engine_routing
from ciphermesh.lab import netns
from ciphermesh.lab.topology import TopologyPlan
from ciphermesh.rtnl.errors import DeviceMissingError
from ciphermesh.rtnl.ownership import PROTO_ENGINE
from tests.support.netns import MTUS, TUN, built_lab, ip_json, make_persistent_tun, pod_cidr, wire_nodes

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

LOCAL = IPv4Address("10.0.1.1")
REMOTE2 = RemoteNode(IPv4Address("10.0.2.1"), (pod_cidr(2),))
REMOTE3 = RemoteNode(IPv4Address("10.0.3.1"), (pod_cidr(3),))


@pytest.fixture
def lab() -> Iterator[TopologyPlan]:
    with built_lab(3) as plan:
        wire_nodes(plan)
        yield plan


def route_get(name: str, *args: str) -> str:
    """The device the kernel picks (`ip route get`), or its refusal."""
    result = netns.run(name, ["ip", "-j", "route", "get", *args], check=False)
    if result.returncode != 0:
        return result.stderr.strip()
    return str(json.loads(result.stdout)[0]["dev"])


def reconcile(name: str, remotes: list[RemoteNode], tun: str = TUN) -> list[str]:
    with netns.iproute(name) as ipr:
        changes = reconcile_engine_routing(
            ipr, tun=tun, local_router_ip=LOCAL, local_pod_cidrs=(pod_cidr(1),), remotes=remotes, mtu=MTUS.pod
        )
    return changes.added + changes.removed


def test_remote_pods_and_router_ips_route_into_the_tun(lab: TopologyPlan) -> None:
    # `ip route get` cannot ask about ESP (the kernel takes only TCP, UDP and ICMP there): the plumbing
    # test sends real ESP; here the rule itself is checked.
    node1 = lab.nodes[0].netns
    assert route_get(node1, "10.0.2.1", "ipproto", "udp") == TUN
    assert route_get(node1, "10.0.2.1", "ipproto", "icmp") == TUN
    assert route_get(node1, "10.0.2.1", "ipproto", "tcp", "dport", "4240") == TUN
    assert route_get(node1, "10.0.3.9", "ipproto", "udp") == TUN
    assert route_get(node1, "10.0.2.1", "from", "10.0.1.5", "iif", "cilium_net") == TUN
    assert "No route to host" in route_get(node1, "10.0.1.77")
    tun = ip_json(node1, "link", "show", TUN)[0]
    assert tun["mtu"] == MTUS.pod and "UP" in tun["flags"]
    routes = ip_json(node1, "route", "show", "proto", str(PROTO_ENGINE))
    via_tun = [r for r in routes if r.get("dev") == TUN]
    assert sorted(r["dst"] for r in via_tun) == ["10.0.2.0/24", "10.0.3.0/24"]
    assert all(r["prefsrc"] == "10.0.1.1" and r["metrics"] == [{"mtu": MTUS.pod}] for r in via_tun)
    rules = ip_json(node1, "rule", "show", "priority", "50")
    assert rules == [
        {
            "priority": 50,
            "src": "all",
            "iif": "lo",
            "ipproto": "esp",
            "table": "50",
            "protocol": str(PROTO_ENGINE),
        }
    ]
    floor = ip_json(node1, "route", "show", "table", "50", "proto", str(PROTO_ENGINE))
    assert floor == [{"type": "unreachable", "dst": "default", "flags": []}]


def test_without_the_tun_remote_pods_are_unreachable_not_routed(lab: TopologyPlan) -> None:
    node1 = lab.nodes[0].netns
    netns.run(node1, ["ip", "link", "del", TUN])
    for dst in ("10.0.2.1", "10.0.2.5", "10.0.3.200"):
        assert "No route to host" in route_get(node1, dst, "ipproto", "udp")
    with pytest.raises(DeviceMissingError, match=f"TUN device {TUN} not found"):
        reconcile(node1, [REMOTE2, REMOTE3])
    assert "No route to host" in route_get(node1, "10.0.2.5", "ipproto", "udp")
    make_persistent_tun(node1)
    assert set(reconcile(node1, [REMOTE2, REMOTE3])) == {
        f"link {TUN} mtu {MTUS.pod}",
        f"link {TUN} up",
        f"route 10.0.2.0/24 dev {TUN} src 10.0.1.1 mtu {MTUS.pod} metric 10",
        f"route 10.0.3.0/24 dev {TUN} src 10.0.1.1 mtu {MTUS.pod} metric 10",
    }
    assert route_get(node1, "10.0.2.5", "ipproto", "udp") == TUN


def test_reconcile_converges_and_removes_only_its_own(lab: TopologyPlan) -> None:
    node1 = lab.nodes[0].netns
    assert reconcile(node1, [REMOTE2, REMOTE3]) == []
    netns.run(node1, ["ip", "route", "add", "10.0.9.0/24", "dev", TUN, "proto", str(PROTO_ENGINE)])
    netns.run(node1, ["ip", "route", "add", "10.0.7.0/24", "dev", TUN])
    netns.run(
        node1,
        [
            "ip",
            "rule",
            "add",
            "priority",
            "77",
            "ipproto",
            "esp",
            "lookup",
            "50",
            "protocol",
            str(PROTO_ENGINE),
        ],
    )
    netns.run(
        node1,
        ["ip", "route", "replace", "10.0.3.0/24", "dev", TUN, "proto", str(PROTO_ENGINE), "metric", "10"],
    )
    changed = reconcile(node1, [REMOTE2, REMOTE3])
    assert set(changed) == {
        f"route 10.0.3.0/24 dev {TUN} src 10.0.1.1 mtu {MTUS.pod} metric 10",
        "route 10.0.9.0/24 metric 0",
        "rule priority 77 proto 151",
        "rule priority 50 proto 151",
        "rule priority 50 iif lo ipproto esp lookup 50",
    }
    assert reconcile(node1, [REMOTE2, REMOTE3]) == []
    shrunk = set(reconcile(node1, [REMOTE2]))
    assert shrunk == {
        "route 10.0.3.0/24 metric 10",
        "route unreachable 10.0.3.0/24 metric 4096",
    }
    assert "Network is unreachable" in route_get(node1, "10.0.3.5", "ipproto", "udp")
    with netns.iproute(node1) as ipr:
        assert remove_engine_routing(ipr)
        assert not remove_engine_routing(ipr)
    assert ip_json(node1, "route", "show", "proto", str(PROTO_ENGINE)) == []
    assert ip_json(node1, "rule", "show", "priority", "50") == []
    assert [r["dst"] for r in ip_json(node1, "route", "show", "dev", TUN)] == ["10.0.7.0/24"]


def test_bad_remotes_are_refused(lab: TopologyPlan) -> None:
    node1 = lab.nodes[0].netns
    with pytest.raises(ValueError, match="overlaps"):
        reconcile(node1, [RemoteNode(IPv4Address("10.0.1.129"), (IPv4Network("10.0.1.128/25"),))])
    with pytest.raises(ValueError, match="outside its pod CIDRs"):
        reconcile(node1, [RemoteNode(IPv4Address("10.0.9.1"), (pod_cidr(2),))])
    assert reconcile(node1, [REMOTE2, REMOTE3]) == []
