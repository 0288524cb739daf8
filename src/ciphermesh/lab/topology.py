"""The lab's network: an underlay namespace with a bridge (as Kind's docker network), a namespace per node.

`plan_topology` is pure; `build` converges the kernel to a plan from any state; `teardown` removes every
namespace of the lab by name, and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pyroute2 import IPRoute

from ciphermesh.datapath.face import ETHERNET_MTU
from ciphermesh.lab import netns
from ciphermesh.lab.names import node_netns, underlay_netns
from ciphermesh.lab.state import check_lab_name
from ciphermesh.rtnl import (
    NUD_PERMANENT,
    ensure_link_up,
    get_link,
    ipv4_addresses,
    link_kind,
    netlink_op,
    require_link,
)
from ciphermesh.rtnl.changes import Changes

BRIDGE = "br0"
NODE_DEVICE = "eth0"
# Kind's docker network is 172.18.0.0/16; one /24 from 172.18-31 is plenty and stays recognisable.
UNDERLAY_CANDIDATES = tuple(IPv4Network(f"172.{second}.0.0/24") for second in range(18, 32))
MAX_NODES = 250

# IPv6 is off in every lab namespace: the datapath encrypts IPv4 only, so no IPv6 may cross between nodes.
_NO_IPV6 = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
_NODE_SYSCTLS = {
    **_NO_IPV6,
    "net.ipv4.ip_forward": "1",
    # Replies to router IPs come back through the TUN while the route out is per protocol: no strict checks.
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
}


class TopologyError(ValueError):
    """A topology that cannot be planned."""


def docker_mac(ip: IPv4Address) -> str:
    """The MAC docker gives an address on its networks: 02:42 and the four address bytes."""
    return ":".join(["02", "42", *(f"{byte:02x}" for byte in ip.packed)])


@dataclass(frozen=True)
class NodePlan:
    """A node: its namespace, eth0's address and MAC, and the name of its port on the bridge."""

    name: str
    netns: str
    ip: IPv4Address
    mac: str
    port: str


@dataclass(frozen=True)
class TopologyPlan:
    """A lab's network; the bridge holds the gateway address, as docker's bridge does."""

    lab: str
    subnet: IPv4Network
    gateway: IPv4Address
    underlay_netns: str
    nodes: tuple[NodePlan, ...]
    mtu: int = ETHERNET_MTU

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(node.name for node in self.nodes)
        raise TopologyError(f"no node {name!r} in lab {self.lab} (nodes: {known})")


def choose_subnet(
    taken: Iterable[IPv4Network],
    candidates: Iterable[IPv4Network] = UNDERLAY_CANDIDATES,
    pod_pool: Sequence[IPv4Network] = (),
) -> IPv4Network:
    """The first candidate that overlaps none of `taken` (default routes do not count) nor the pod pool.

    A node network inside the pod pool cannot work: a node's IP would be handed out and routed as a pod's.
    """
    specific = [net for net in taken if net.prefixlen > 0]
    free = [candidate for candidate in candidates if not any(candidate.overlaps(n) for n in specific)]
    if not free:
        raise TopologyError("every candidate underlay subnet collides with a route of this machine")
    for candidate in free:
        if not any(candidate.overlaps(cidr) for cidr in pod_pool):
            return candidate
    inside = ", ".join(str(cidr) for cidr in pod_pool if cidr.overlaps(free[0]))
    others = f" and every other node network the lab can use ({free[1]} to {free[-1]})" if free[1:] else ""
    raise TopologyError(f"the pod CIDR pool {inside} overlaps the node network {free[0]}{others}; "
                        "give ipam.operator.clusterPoolIPv4PodCIDRList a range outside them")


def host_networks() -> list[IPv4Network]:
    """The IPv4 destinations routed in the machine's own namespace (read only, every table)."""
    with IPRoute() as ipr:
        return [
            IPv4Network(f"{route.get_attr('RTA_DST') or '0.0.0.0'}/{route['dst_len']}", strict=False)
            for route in ipr.route("dump", family=2)
        ]


def plan_topology(lab: str, nodes: int, subnet: IPv4Network, mtu: int = ETHERNET_MTU) -> TopologyPlan:
    """Node i gets the subnet's address i+1 (the gateway is the first), as docker hands them out."""
    check_lab_name(lab)
    if not 1 <= nodes <= MAX_NODES:
        raise TopologyError(f"{nodes} nodes: a lab has 1 to {MAX_NODES}")
    if subnet.num_addresses < nodes + 3:
        raise TopologyError(f"underlay subnet {subnet} is too small for {nodes} nodes")
    gateway = subnet.network_address + 1
    plans = []
    for index in range(1, nodes + 1):
        ip = subnet.network_address + 1 + index
        name = f"node-{index}"
        plans.append(NodePlan(name, node_netns(lab, index), ip, docker_mac(ip), name))
    return TopologyPlan(lab, subnet, gateway, underlay_netns(lab), tuple(plans), mtu)


def build(plan: TopologyPlan) -> Changes:
    """Create (or repair) the underlay, the bridge and every node with eth0; idempotent."""
    changes = Changes()
    netns.create(plan.underlay_netns)
    netns.write_sysctls(plan.underlay_netns, _NO_IPV6)
    for node in plan.nodes:
        netns.create(node.netns)
        netns.write_sysctls(node.netns, _NODE_SYSCTLS)
    with netns.iproute(plan.underlay_netns) as ipr:
        ensure_link_up(ipr, require_link(ipr, "lo"), None, changes)
        bridge = _ensure_bridge(ipr, plan, changes)
        for node in plan.nodes:
            _ensure_node_port(ipr, plan, node, bridge, changes)
    for node in plan.nodes:
        with netns.iproute(node.netns) as ipr:
            ensure_link_up(ipr, require_link(ipr, "lo"), None, changes)
            _ensure_node_eth0(ipr, plan, node, changes)
            _ensure_node_neighbours(ipr, plan, node, changes)
    return changes


def teardown(lab: str) -> list[str]:
    """Delete every namespace of the lab (pods, nodes, then the underlay) and the processes inside them."""
    names = list(netns.lab_residue(lab).namespaces)
    # Pods and nodes before the underlay, so no veth outlives the bridge it hangs on.
    names.sort(key=lambda name: name == underlay_netns(lab))
    for name in names:
        netns.delete(name)
    return names


def _ensure_address(ipr: Any, name: str, address: IPv4Address, prefixlen: int, changes: Changes) -> None:
    index = require_link(ipr, name)["index"]
    for current, length in ipv4_addresses(ipr, index):
        if (current, length) != (str(address), prefixlen):
            with netlink_op(f"delete address {current}/{length} on {name}"):
                ipr.addr("del", index=index, address=current, prefixlen=length)
            changes.removed.append(f"address {current}/{length} dev {name}")
    if (str(address), prefixlen) not in ipv4_addresses(ipr, index):
        with netlink_op(f"add address {address}/{prefixlen} on {name}"):
            ipr.addr("add", index=index, address=str(address), prefixlen=prefixlen)
        changes.added.append(f"address {address}/{prefixlen} dev {name}")


def _ensure_bridge(ipr: Any, plan: TopologyPlan, changes: Changes) -> int:
    link = get_link(ipr, BRIDGE)
    if link is not None and link_kind(link) != "bridge":
        with netlink_op(f"delete link {BRIDGE}"):
            ipr.link("del", index=link["index"])
        changes.removed.append(f"link {BRIDGE}")
        link = None
    if link is None:
        with netlink_op(f"add link {BRIDGE} type bridge"):
            ipr.link("add", ifname=BRIDGE, kind="bridge", address=docker_mac(plan.gateway), mtu=plan.mtu)
        changes.added.append(f"link {BRIDGE} type bridge")
    _ensure_address(ipr, BRIDGE, plan.gateway, plan.subnet.prefixlen, changes)
    ensure_link_up(ipr, require_link(ipr, BRIDGE), plan.mtu, changes)
    return int(require_link(ipr, BRIDGE)["index"])


def _ensure_node_port(ipr: Any, plan: TopologyPlan, node: NodePlan, bridge: int, changes: Changes) -> None:
    port = get_link(ipr, node.port)
    with netns.iproute(node.netns) as node_ipr:
        eth0 = get_link(node_ipr, NODE_DEVICE)
        if port is not None and eth0 is None:
            # Half a pair: the other end is gone, so this one cannot be reused.
            with netlink_op(f"delete link {node.port}"):
                ipr.link("del", index=port["index"])
            changes.removed.append(f"link {node.port}")
            port = None
        if port is None and eth0 is not None:
            with netlink_op(f"delete link {NODE_DEVICE} in {node.netns}"):
                node_ipr.link("del", index=eth0["index"])
            changes.removed.append(f"link {NODE_DEVICE} netns {node.netns}")
    if port is None:
        target = netns.netns_path(node.netns)
        fd = target.open("rb")
        try:
            with netlink_op(f"add link {node.port} type veth peer {NODE_DEVICE} netns {node.netns}"):
                ipr.link(
                    "add",
                    ifname=node.port,
                    kind="veth",
                    peer={"ifname": NODE_DEVICE, "net_ns_fd": fd.fileno(), "address": node.mac},
                )
        finally:
            fd.close()
        changes.added.append(f"link {node.port} type veth peer {NODE_DEVICE} netns {node.netns}")
        port = require_link(ipr, node.port)
    if port.get_attr("IFLA_MASTER") != bridge:
        with netlink_op(f"set {node.port} master {BRIDGE}"):
            ipr.link("set", index=port["index"], master=bridge)
        changes.added.append(f"link {node.port} master {BRIDGE}")
    ensure_link_up(ipr, require_link(ipr, node.port), plan.mtu, changes)


def _ensure_node_neighbours(ipr: Any, plan: TopologyPlan, node: NodePlan, changes: Changes) -> None:
    """Every other node's MAC as a permanent neighbour on eth0, as static ARP.

    The kernel's ARP table is one for all namespaces, and its garbage-collection limit (gc_thresh3,
    1024, host-wide and not ours to raise) counts every dynamic entry of every lab node: 40 nodes
    resolving each other overflowed it ("neighbor table overflow", sends fail with ENOBUFS).
    Permanent entries do not count.
    """
    index = require_link(ipr, NODE_DEVICE)["index"]
    current = {
        entry.get_attr("NDA_DST"): entry.get_attr("NDA_LLADDR")
        for entry in ipr.neigh("dump", ifindex=index, family=2)
        if entry["state"] & NUD_PERMANENT
    }
    for other in plan.nodes:
        if other is node or current.get(str(other.ip)) == other.mac:
            continue
        what = f"neighbour {other.ip} lladdr {other.mac} dev {NODE_DEVICE} permanent netns {node.netns}"
        with netlink_op(f"add {what}"):
            ipr.neigh("replace", dst=str(other.ip), lladdr=other.mac, ifindex=index, state=NUD_PERMANENT)
        changes.added.append(what)


def _ensure_node_eth0(ipr: Any, plan: TopologyPlan, node: NodePlan, changes: Changes) -> None:
    eth0 = require_link(ipr, NODE_DEVICE)
    if eth0.get_attr("IFLA_ADDRESS") != node.mac:
        with netlink_op(f"set {NODE_DEVICE} address {node.mac} in {node.netns}"):
            ipr.link("set", index=eth0["index"], address=node.mac)
        changes.added.append(f"link {NODE_DEVICE} address {node.mac} netns {node.netns}")
    _ensure_address(ipr, NODE_DEVICE, node.ip, plan.subnet.prefixlen, changes)
    ensure_link_up(ipr, require_link(ipr, NODE_DEVICE), plan.mtu, changes)
