"""Helpers for tests that build lab namespaces: unique names, cleanup on failure, an untouched host."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from pyroute2 import IPRoute

from ciphermesh.datapath.desired import RemoteNode, VxlanPeer
from ciphermesh.datapath.mtu import plan_mtus
from ciphermesh.datapath.netlink.engine_routes import reconcile_engine_routing
from ciphermesh.datapath.netlink.links import NodeLinks, ensure_node_links, router_ip
from ciphermesh.datapath.netlink.vxlan_peers import reconcile_vxlan_peers
from ciphermesh.datapath.userspace.tun import TunDevice
from ciphermesh.lab import netns
from ciphermesh.lab.topology import TopologyPlan, build, choose_subnet, host_networks, plan_topology, teardown
from ciphermesh.rtnl.ownership import ESP_TABLE
from tests.support.names import unique_lab

TUN = "cm_tun0"
MTUS = plan_mtus("ipsec")



def pod_cidr(index: int) -> IPv4Network:
    return IPv4Network(f"10.0.{index}.0/24")


@dataclass(frozen=True)
class HostSnapshot:
    """The machine's own namespace: links, addresses, routes and rules, as sets."""

    links: frozenset[tuple[int, str]]
    addresses: frozenset[tuple[int, str, int]]
    routes: frozenset[tuple[Any, ...]]
    rules: frozenset[tuple[Any, ...]]
    netns: frozenset[str]


def host_snapshot() -> HostSnapshot:
    with IPRoute() as ipr:
        links = frozenset((link["index"], link.get_attr("IFLA_IFNAME")) for link in ipr.link("dump"))
        addresses = frozenset(
            (msg["index"], msg.get_attr("IFA_ADDRESS"), msg["prefixlen"]) for msg in ipr.addr("dump")
        )
        routes = frozenset(
            (r["family"], r.get_attr("RTA_TABLE"), r.get_attr("RTA_DST"), r["dst_len"], r.get_attr("RTA_OIF"))
            for r in ipr.route("dump")
        )
        rules = frozenset(
            (r["family"], r.get_attr("FRA_PRIORITY"), r.get_attr("FRA_TABLE")) for r in ipr.rule("dump")
        )
    return HostSnapshot(links, addresses, routes, rules, frozenset(netns.names()))


@contextlib.contextmanager
def built_lab(nodes: int, lab: str | None = None) -> Iterator[TopologyPlan]:
    """A lab topology that is torn down even when the test fails; on success, checks nothing was left."""
    lab = lab or unique_lab("cmt")
    before = host_snapshot()
    plan = plan_topology(lab, nodes, choose_subnet(host_networks()))
    try:
        build(plan)
        yield plan
    finally:
        teardown(lab)
    assert not netns.lab_residue(lab)
    after = host_snapshot()
    # Other labs may come and go meanwhile; this lab's names and the host's own config must not differ.
    assert after.links == before.links
    assert after.addresses == before.addresses
    assert after.routes == before.routes
    assert after.rules == before.rules
    assert not {name for name in after.netns ^ before.netns if name.startswith(f"{lab}-")}



def make_persistent_tun(netns_name: str, name: str = TUN) -> None:
    with netns.entered(netns_name), TunDevice(name) as tun:
        tun.set_persistent(True)


def wire_nodes(plan: TopologyPlan, tun: str | None = TUN) -> None:
    """Give node i pod CIDR 10.0.i.0/24, its links, VXLAN peers and (with `tun`) the engine's routing."""
    for index, node in enumerate(plan.nodes, start=1):
        spec = NodeLinks(node.ip, pod_cidr(index), MTUS)
        others = [(j, other) for j, other in enumerate(plan.nodes, start=1) if other != node]
        with netns.iproute(node.netns) as ipr:
            ensure_node_links(ipr, spec)
            peers = [VxlanPeer(other.ip, router_ip(pod_cidr(j))) for j, other in others]
            reconcile_vxlan_peers(ipr, local_router_ip=spec.router_ip, peers=peers, table=ESP_TABLE)
        if tun is None:
            continue
        make_persistent_tun(node.netns, tun)
        with netns.iproute(node.netns) as ipr:
            reconcile_engine_routing(
                ipr,
                tun=tun,
                local_router_ip=spec.router_ip,
                local_pod_cidrs=(spec.pod_cidr,),
                remotes=[RemoteNode(router_ip(pod_cidr(j)), (pod_cidr(j),)) for j, _ in others],
                mtu=MTUS.pod,
            )


def ip_json(netns_name: str, *args: str) -> Any:
    """Ask iproute2 itself (`ip -j ...`): an independent reader of what the kernel holds."""
    out = netns.run(netns_name, ["ip", "-j", *args]).stdout
    return json.loads(out) if out.strip() else []


def wait_operstate_up(netns_name: str, ifname: str, timeout: float = 10.0) -> None:
    """Until the kernel's linkwatch has activated `ifname`: before that its qdisc drops every packet."""
    deadline = time.monotonic() + timeout
    while ip_json(netns_name, "link", "show", ifname)[0]["operstate"] != "UP":
        assert time.monotonic() < deadline, f"{ifname} in {netns_name} did not come up within {timeout} s"
        time.sleep(0.02)


def tx_packets(netns_name: str, ifname: str) -> int:
    with netns.iproute(netns_name) as ipr:
        link = ipr.link("get", ifname=ifname)[0]
        return int(link.get_attr("IFLA_STATS64")["tx_packets"])


class Capture:
    """tcpdump inside a namespace, started and ready before the block sends anything."""

    def __init__(self, netns_name: str, iface: str, expression: Sequence[str], count: int) -> None:
        argv = ["tcpdump", "-n", "-l", "--immediate-mode", "-c", str(count), "-i", iface, *expression]
        self.process = netns.popen(netns_name, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._wait_listening(5.0)

    def _wait_listening(self, timeout: float) -> None:
        assert self.process.stderr is not None
        fd = self.process.stderr.fileno()
        deadline = time.monotonic() + timeout
        seen = b""
        while b"listening on" not in seen:
            remaining = deadline - time.monotonic()
            chunk = os.read(fd, 4096) if remaining > 0 and select.select([fd], [], [], remaining)[0] else b""
            if not chunk:
                self.stop()
                raise AssertionError(f"tcpdump did not start: {seen.decode(errors='replace')!r}")
            seen += chunk

    def lines(self, timeout: float = 5.0) -> list[str]:
        """What tcpdump printed once it has its packets (or after `timeout`)."""
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            out, _ = self.process.communicate()
        return out.decode(errors="replace").splitlines()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
