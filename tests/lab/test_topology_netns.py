"""The lab topology in real namespaces: underlay bridge, nodes on it, convergence, and clean teardown."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ciphermesh.lab import netns
from ciphermesh.lab.topology import TopologyPlan, build, choose_subnet, host_networks, teardown
from tests.support.names import unique_lab
from tests.support.netns import built_lab, ip_json
from tests.support.wait import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


@pytest.fixture
def lab() -> Iterator[TopologyPlan]:
    with built_lab(2) as plan:
        yield plan


def read_sysctl(name: str, key: str) -> str:
    return netns.run(name, ["cat", "/proc/sys/" + key.replace(".", "/")]).stdout.strip()


def test_nodes_reach_each_other_over_the_underlay_bridge(lab: TopologyPlan) -> None:
    node1, node2 = lab.nodes
    assert netns.exists(lab.underlay_netns) and netns.exists(node1.netns) and netns.exists(node2.netns)
    eth0 = ip_json(node1.netns, "addr", "show", "dev", "eth0")[0]
    assert eth0["address"] == node1.mac and eth0["mtu"] == 1500
    assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"]] == [(str(node1.ip), 24)]
    ports = ip_json(lab.underlay_netns, "link", "show", "master", "br0")
    assert sorted(p["ifname"] for p in ports) == ["node-1", "node-2"]
    # Static ARP between nodes: the host-wide ARP table's limit would otherwise cap a lab near 30 nodes.
    for node, other in ((node1, node2), (node2, node1)):
        neighbours = ip_json(node.netns, "neigh", "show", "dev", "eth0", "nud", "permanent")
        assert [(n["dst"], n["lladdr"]) for n in neighbours] == [(str(other.ip), other.mac)]
    netns.run(node1.netns, ["ping", "-c", "1", "-W", "2", str(node2.ip)])
    netns.run(node2.netns, ["ping", "-c", "1", "-W", "2", str(lab.gateway)])
    assert read_sysctl(node1.netns, "net.ipv4.ip_forward") == "1"
    assert read_sysctl(node1.netns, "net.ipv4.conf.all.rp_filter") == "0"
    assert read_sysctl(node1.netns, "net.ipv6.conf.eth0.disable_ipv6") == "1"
    assert read_sysctl(lab.underlay_netns, "net.ipv6.conf.br0.disable_ipv6") == "1"


def test_underlay_subnet_avoids_the_routes_of_the_namespace_it_is_planned_from(lab: TopologyPlan) -> None:
    with netns.entered(lab.nodes[0].netns):
        taken = host_networks()
    assert lab.subnet in taken
    assert not choose_subnet(taken).overlaps(lab.subnet)


def test_build_is_idempotent_and_repairs_half_a_veth_pair(lab: TopologyPlan) -> None:
    assert not build(lab)
    node2 = lab.nodes[1]
    netns.run(node2.netns, ["ip", "link", "del", "eth0"])
    netns.run(lab.nodes[0].netns, ["ip", "addr", "add", "192.0.2.99/24", "dev", "eth0"])
    changes = build(lab)
    assert "link node-2 type veth peer eth0 netns " + node2.netns in changes.added
    assert (f"neighbour {lab.nodes[0].ip} lladdr {lab.nodes[0].mac} dev eth0 permanent netns {node2.netns}"
            in changes.added)
    assert "address 192.0.2.99/24 dev eth0" in changes.removed
    assert not build(lab)
    netns.run(lab.nodes[0].netns, ["ping", "-c", "1", "-W", "2", str(node2.ip)])


def test_teardown_removes_crash_leftovers_and_only_the_lab() -> None:
    lab = unique_lab("cmt")
    leftover = netns.NETNS_DIR / f"{lab}-node-7"
    others = [f"{lab}-other", f"{lab}9-node-1"]
    sleeper = None
    try:
        for name in others:
            netns.create(name)
        with built_lab(1, lab) as plan:
            # A crash between creating the file and mounting the namespace leaves a bare file.
            leftover.touch()
            sleeper = netns.popen(plan.nodes[0].netns, ["sleep", "60"])
            wait_until(lambda: sleeper.pid in netns.lab_residue(lab).pids)
            residue = netns.lab_residue(lab)
            assert set(residue.namespaces) == {plan.underlay_netns, plan.nodes[0].netns, leftover.name}
        # built_lab has torn the lab down and found nothing of it left.
        sleeper.wait(timeout=5)
        assert not leftover.exists()
        assert all(netns.exists(name) for name in others)
        assert teardown(lab) == []
    finally:
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        for name in others:
            netns.delete(name)
        leftover.unlink(missing_ok=True)


def test_run_reports_failures_in_one_line(lab: TopologyPlan) -> None:
    with pytest.raises(netns.NetnsError, match=r"exited 1: last words$"):
        netns.run(lab.nodes[0].netns, ["sh", "-c", "echo first >&2; echo last words >&2; exit 1"])
    with pytest.raises(netns.NetnsError, match="does not exist"):
        netns.run(f"{lab.lab}-node-9", ["true"])
    with pytest.raises(netns.NetnsError, match="does not exist"):
        netns.iproute(f"{lab.lab}-node-9")
    assert not os.path.exists(netns.NETNS_DIR / f"{lab.lab}-node-9")
    assert lab.nodes[0].mac in netns.run(lab.nodes[0].netns, ["ip", "-o", "link", "show", "eth0"]).stdout
