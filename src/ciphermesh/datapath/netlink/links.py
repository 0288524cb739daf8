"""A node's own devices: `cilium_host`/`cilium_net` with the router IP, and the kernel VXLAN cilium_vxlan."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from ciphermesh.datapath.mtu import Mtus
from ciphermesh.rtnl import (
    RT_SCOPE_LINK,
    ensure_link_up,
    get_link,
    ipv4_addresses,
    link_index,
    link_info_data,
    link_kind,
    netlink_op,
    require_link,
)
from ciphermesh.rtnl.changes import Changes
from ciphermesh.rtnl.errors import DeviceMissingError

CILIUM_HOST = "cilium_host"
CILIUM_NET = "cilium_net"
CILIUM_VXLAN = "cilium_vxlan"
UNDERLAY_DEVICE = "eth0"
VXLAN_PORT = 8472
# A fixed VNI: kernel VXLAN has no per-packet identity as Cilium's BPF has; 2 is Cilium's "world" identity.
VXLAN_VNI = 2
# CNI's convention for MACs derived from an IPv4 address (0a:58 + the four address bytes).
_VTEP_MAC_PREFIX = "0a:58"


def router_ip(pod_cidr: IPv4Network) -> IPv4Address:
    """The node's router IP (on cilium_host): the first usable address of its pod CIDR."""
    if pod_cidr.prefixlen > 30:
        raise ValueError(f"pod CIDR {pod_cidr} is too small: a node needs at least a /30")
    return pod_cidr.network_address + 1


def pod_cidr_conflict(ipr: Any, node_ip: IPv4Address, pod_cidr: IPv4Network) -> str | None:
    """Why `pod_cidr` cannot serve this node (it overlaps the node IP's network), or None if it can."""
    addresses = ipr.addr("dump", family=2)
    prefixes = [msg["prefixlen"] for msg in addresses if msg.get_attr("IFA_ADDRESS") == str(node_ip)]
    node_network = IPv4Network(f"{node_ip}/{prefixes[0] if prefixes else 32}", strict=False)
    if not node_network.overlaps(pod_cidr):
        return None
    # Its router IP and pods would be routed where the node's peers are: nothing would reach anyone.
    return (f"pod CIDR {pod_cidr} refused: it overlaps the node network {node_network} of node IP {node_ip}; "
            "the operator's pool (ipam.operator.clusterPoolIPv4PodCIDRList) must lie outside it")


def vtep_mac(router: IPv4Address) -> str:
    """cilium_vxlan's MAC, derived from the router IP so peers know it without asking."""
    return ":".join([_VTEP_MAC_PREFIX, *(f"{byte:02x}" for byte in router.packed)])


@dataclass(frozen=True)
class NodeLinks:
    """What a node's devices should look like."""

    node_ip: IPv4Address
    pod_cidr: IPv4Network
    mtus: Mtus
    device: str = UNDERLAY_DEVICE

    @property
    def router_ip(self) -> IPv4Address:
        return router_ip(self.pod_cidr)

    @property
    def vtep_mac(self) -> str:
        return vtep_mac(self.router_ip)


def ensure_node_links(ipr: Any, spec: NodeLinks) -> Changes:
    """Make cilium_host/cilium_net and cilium_vxlan match `spec`, from any starting state."""
    changes = Changes()
    device = link_index(ipr, spec.device)
    if device is None:
        raise DeviceMissingError(f"device {spec.device} not found: cilium_vxlan needs it as its underlay")
    _ensure_host_pair(ipr, spec, changes)
    _ensure_vxlan(ipr, spec, device, changes)
    return changes


def remove_node_links(ipr: Any) -> Changes:
    changes = Changes()
    for name in (CILIUM_VXLAN, CILIUM_HOST, CILIUM_NET):
        _delete_link(ipr, name, changes)
    return changes


def _delete_link(ipr: Any, name: str, changes: Changes) -> None:
    index = link_index(ipr, name)
    if index is not None:
        with netlink_op(f"delete link {name}"):
            ipr.link("del", index=index)
        changes.removed.append(f"link {name}")


def _ensure_host_pair(ipr: Any, spec: NodeLinks, changes: Changes) -> None:
    host = get_link(ipr, CILIUM_HOST)
    peer = get_link(ipr, CILIUM_NET)
    paired = (
        host is not None
        and peer is not None
        and link_kind(host) == "veth"
        and host.get_attr("IFLA_LINK") == peer["index"]
    )
    if host is not None and not paired:
        _delete_link(ipr, CILIUM_HOST, changes)
        host = None
    if host is None:
        # A cilium_net left alone by a crash would block the veth pair's creation.
        _delete_link(ipr, CILIUM_NET, changes)
        with netlink_op(f"add link {CILIUM_HOST} type veth peer {CILIUM_NET}"):
            ipr.link("add", ifname=CILIUM_HOST, kind="veth", peer={"ifname": CILIUM_NET})
        changes.added.append(f"link {CILIUM_HOST} type veth peer {CILIUM_NET}")
    for name in (CILIUM_HOST, CILIUM_NET):
        ensure_link_up(ipr, require_link(ipr, name), spec.mtus.device, changes)
    index = require_link(ipr, CILIUM_HOST)["index"]
    wanted = (str(spec.router_ip), 32)
    for address, prefixlen in ipv4_addresses(ipr, index):
        if (address, prefixlen) != wanted:
            with netlink_op(f"delete address {address}/{prefixlen} on {CILIUM_HOST}"):
                ipr.addr("del", index=index, address=address, prefixlen=prefixlen)
            changes.removed.append(f"address {address}/{prefixlen} dev {CILIUM_HOST}")
    if wanted not in ipv4_addresses(ipr, index):
        # Scope link, as Cilium has it: the router IP is never picked as a source for unrelated traffic.
        with netlink_op(f"add address {spec.router_ip}/32 on {CILIUM_HOST}"):
            ipr.addr("add", index=index, address=str(spec.router_ip), prefixlen=32, scope=RT_SCOPE_LINK)
        changes.added.append(f"address {spec.router_ip}/32 dev {CILIUM_HOST}")


def _vxlan_matches(link: Any, spec: NodeLinks, device: int) -> bool:
    data = link_info_data(link)
    if link_kind(link) != "vxlan" or data is None:
        return False
    return (
        data.get_attr("IFLA_VXLAN_ID") == VXLAN_VNI
        and data.get_attr("IFLA_VXLAN_PORT") == VXLAN_PORT
        and data.get_attr("IFLA_VXLAN_LINK") == device
        and data.get_attr("IFLA_VXLAN_LOCAL") == str(spec.node_ip)
        and not data.get_attr("IFLA_VXLAN_LEARNING")
    )


def _ensure_vxlan(ipr: Any, spec: NodeLinks, device: int, changes: Changes) -> None:
    link = get_link(ipr, CILIUM_VXLAN)
    if link is not None and not _vxlan_matches(link, spec, device):
        # VNI, port, local address and underlay device cannot be changed on an existing VXLAN device.
        _delete_link(ipr, CILIUM_VXLAN, changes)
        link = None
    if link is None:
        what = (
            f"link {CILIUM_VXLAN} type vxlan id {VXLAN_VNI} dstport {VXLAN_PORT} dev {spec.device} "
            f"local {spec.node_ip} nolearning"
        )
        with netlink_op(f"add {what}"):
            ipr.link(
                "add",
                ifname=CILIUM_VXLAN,
                kind="vxlan",
                vxlan_id=VXLAN_VNI,
                vxlan_port=VXLAN_PORT,
                vxlan_link=device,
                vxlan_local=str(spec.node_ip),
                vxlan_learning=0,
                address=spec.vtep_mac,
                mtu=spec.mtus.vxlan,
            )
        changes.added.append(what)
        link = require_link(ipr, CILIUM_VXLAN)
    if link.get_attr("IFLA_ADDRESS") != spec.vtep_mac:
        with netlink_op(f"set {CILIUM_VXLAN} address {spec.vtep_mac}"):
            ipr.link("set", index=link["index"], address=spec.vtep_mac)
        changes.added.append(f"link {CILIUM_VXLAN} address {spec.vtep_mac}")
    ensure_link_up(ipr, require_link(ipr, CILIUM_VXLAN), spec.mtus.vxlan, changes)
