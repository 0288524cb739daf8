"""Pods in real namespaces: veth to the node, first-free addresses, same-node traffic, host tools inside."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from ciphermesh.lab import netns
from ciphermesh.lab.pods import PodError, create_pod, delete_pod, host_ifname, list_pods
from ciphermesh.lab.processes import pid_alive
from ciphermesh.lab.topology import TopologyPlan
from ciphermesh.rtnl.ownership import PROTO_ENDPOINT
from tests.support.netns import MTUS, built_lab, ip_json, pod_cidr, wire_nodes
from tests.support.wait import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


@pytest.fixture
def lab() -> Iterator[TopologyPlan]:
    with built_lab(1) as plan:
        wire_nodes(plan, tun=None)
        yield plan


def test_host_ifname_is_cilium_style() -> None:
    name = host_ifname("web-1")
    assert re.fullmatch(r"lxc[0-9a-f]{11}", name)
    assert host_ifname("web-1") == name != host_ifname("web-2")


def test_pods_on_one_node_talk_directly(lab: TopologyPlan) -> None:
    node = lab.nodes[0].netns
    a = create_pod(lab.lab, "a", node_netns=node, pod_cidr=pod_cidr(1), mtu=MTUS.pod)
    b = create_pod(lab.lab, "b", node_netns=node, pod_cidr=pod_cidr(1), mtu=MTUS.pod)
    assert (a.ip, b.ip) == (IPv4Address("10.0.1.2"), IPv4Address("10.0.1.3"))
    assert list_pods(lab.lab, node) == [a, b]
    eth0 = ip_json(a.netns, "addr", "show", "eth0")[0]
    assert eth0["mtu"] == MTUS.pod
    assert [(x["local"], x["prefixlen"]) for x in eth0["addr_info"]] == [("10.0.1.2", 32)]
    assert {(r["dst"], r.get("gateway")) for r in ip_json(a.netns, "route", "show")} == {
        ("default", "10.0.1.1"),
        ("10.0.1.1", None),
    }
    lxc = ip_json(node, "link", "show", a.host_ifname)[0]
    assert lxc["mtu"] == MTUS.pod and lxc["ifalias"] == "a"
    node_routes = ip_json(node, "route", "show", "proto", str(PROTO_ENDPOINT))
    assert {(r["dst"], r["dev"]) for r in node_routes} == {
        ("10.0.1.2", a.host_ifname),
        ("10.0.1.3", b.host_ifname),
    }
    netns.run(a.netns, ["ping", "-c", "1", "-W", "2", str(b.ip)])
    netns.run(b.netns, ["ping", "-c", "1", "-W", "2", "10.0.1.1"])


def test_host_binaries_work_inside_pods(lab: TopologyPlan) -> None:
    node = lab.nodes[0].netns
    a = create_pod(lab.lab, "a", node_netns=node, pod_cidr=pod_cidr(1), mtu=MTUS.pod)
    b = create_pod(lab.lab, "b", node_netns=node, pod_cidr=pod_cidr(1), mtu=MTUS.pod)
    server = netns.popen(b.netns, ["python3", "-m", "http.server", "--bind", str(b.ip), "8080"])
    try:
        wait_until(lambda: "8080" in netns.run(b.netns, ["ss", "-Htln"]).stdout)
        page = netns.run(a.netns, ["curl", "-sS", "--max-time", "5", f"http://{b.ip}:8080/"])
        assert "Directory listing" in page.stdout
        delete_pod(lab.lab, "b", node_netns=node)
        server.wait(timeout=5)
        assert not pid_alive(server.pid)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_addresses_first_free_explicit_and_idempotent(lab: TopologyPlan) -> None:
    node = lab.nodes[0].netns
    a = create_pod(lab.lab, "a", node_netns=node, pod_cidr=pod_cidr(1), mtu=MTUS.pod)
    c = create_pod(
        lab.lab, "c", node_netns=node, pod_cidr=pod_cidr(1), mtu=MTUS.pod, ip=IPv4Address("10.0.1.50")
    )
    assert c.ip == IPv4Address("10.0.1.50")
    assert create_pod(lab.lab, "a", node_netns=node, pod_cidr=pod_cidr(1), mtu=MTUS.pod) == a
    with pytest.raises(PodError, match="taken by another pod"):
        create_pod(lab.lab, "d", node_netns=node, pod_cidr=pod_cidr(1), mtu=MTUS.pod, ip=a.ip)
    for bad in ("10.0.1.1", "10.0.1.0", "10.0.1.255", "10.0.2.7"):
        with pytest.raises(PodError, match="not a free pod address"):
            create_pod(lab.lab, "d", node_netns=node, pod_cidr=pod_cidr(1), mtu=MTUS.pod, ip=IPv4Address(bad))
    with pytest.raises(PodError, match="does not exist"):
        create_pod(lab.lab, "e", node_netns=f"{lab.lab}-node-9", pod_cidr=pod_cidr(1), mtu=MTUS.pod)
    assert not netns.exists(f"{lab.lab}-pod-d") and not netns.exists(f"{lab.lab}-pod-e")
    delete_pod(lab.lab, "a", node_netns=node)
    delete_pod(lab.lab, "a", node_netns=node)
    assert not netns.exists(a.netns)
    assert a.host_ifname not in {link["ifname"] for link in ip_json(node, "link", "show")}
    d = create_pod(lab.lab, "d", node_netns=node, pod_cidr=pod_cidr(1), mtu=MTUS.pod)
    assert d.ip == IPv4Address("10.0.1.2")
    assert [pod.name for pod in list_pods(lab.lab, node)] == ["c", "d"]


def test_half_made_pod_is_finished(lab: TopologyPlan) -> None:
    node = lab.nodes[0].netns
    a = create_pod(lab.lab, "a", node_netns=node, pod_cidr=pod_cidr(1), mtu=MTUS.pod)
    netns.run(a.netns, ["ip", "link", "del", "eth0"])
    again = create_pod(lab.lab, "a", node_netns=node, pod_cidr=pod_cidr(1), mtu=MTUS.pod)
    assert again.ip == a.ip
    netns.run(a.netns, ["ping", "-c", "1", "-W", "2", "10.0.1.1"])
