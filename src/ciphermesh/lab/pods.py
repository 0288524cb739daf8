"""Pods: a namespace whose eth0 is a veth to its node (host side `lxc<hash>`, as Cilium names it).

The pod has its address as a /32 and a default route via the node's router IP, as Cilium's pods do; the
node has a /32 route to the pod on the lxc device. The kernel is the record: the node's /32 routes say which
addresses are taken, and the lxc device's alias names its pod.
"""

from __future__ import annotations

import errno
import hashlib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from ciphermesh.datapath.face import router_ip
from ciphermesh.lab import netns
from ciphermesh.lab.names import check_pod_name, pod_netns
from ciphermesh.rtnl import (
    RT_SCOPE_LINK,
    delete_route,
    get_link,
    ipv4_addresses,
    is_up,
    link_index,
    netlink_op,
    require_link,
)
from ciphermesh.rtnl.errors import DatapathError
from ciphermesh.rtnl.ownership import MAIN_TABLE, PROTO_ENDPOINT

POD_DEVICE = "eth0"
_NO_IPV6 = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}


class PodError(ValueError):
    """A pod that cannot be created as asked."""


@dataclass(frozen=True)
class Pod:
    """A pod as the kernel has it."""

    name: str
    netns: str
    node_netns: str
    ip: IPv4Address
    host_ifname: str


def host_ifname(pod: str) -> str:
    """The node-side veth name: `lxc` and 11 hex digits of a hash of the pod name (14 bytes < IFNAMSIZ)."""
    return "lxc" + hashlib.sha256(check_pod_name(pod).encode()).hexdigest()[:11]


def _is_pod_name(name: str) -> bool:
    try:
        check_pod_name(name)
    except ValueError:
        return False
    return True


def _endpoint_routes(ipr: Any) -> dict[IPv4Address, Any]:
    """Pod address -> its /32 endpoint route on the node."""
    return {
        IPv4Address(route.get_attr("RTA_DST")): route
        for route in ipr.route("dump", table=MAIN_TABLE, proto=PROTO_ENDPOINT, family=2)
        if route["dst_len"] == 32
    }


def _check_address(ip: IPv4Address, pod_cidr: IPv4Network) -> None:
    if ip not in pod_cidr or ip in (
        pod_cidr.network_address,
        pod_cidr.broadcast_address,
        router_ip(pod_cidr),
    ):
        raise PodError(f"address {ip} is not a free pod address of {pod_cidr}")


def _add_endpoint_route(ipr: Any, ip: IPv4Address, lxc: int) -> bool:
    """Claim `ip` for the pod; False if another pod has it (the exclusive add is the lock)."""
    try:
        ipr.route(
            "add",
            dst=str(ip),
            dst_len=32,
            oif=lxc,
            table=MAIN_TABLE,
            proto=PROTO_ENDPOINT,
            scope=RT_SCOPE_LINK,
        )
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return False
        raise DatapathError(f"add route {ip}/32: {exc.args[1] if len(exc.args) > 1 else exc}") from exc
    return True


def _claim_address(ipr: Any, lxc: int, pod_cidr: IPv4Network, wanted: IPv4Address | None) -> IPv4Address:
    routes = _endpoint_routes(ipr)
    for ip, route in routes.items():
        if route.get_attr("RTA_OIF") != lxc:
            continue
        if wanted is None or ip == wanted:
            return ip
        delete_route(ipr, route)
    if wanted is not None:
        if not _add_endpoint_route(ipr, wanted, lxc):
            raise PodError(f"address {wanted} is taken by another pod")
        return wanted
    reserved = router_ip(pod_cidr)
    for ip in pod_cidr.hosts():
        if ip != reserved and ip not in routes and _add_endpoint_route(ipr, ip, lxc):
            return ip
    raise PodError(f"no free address left in {pod_cidr}")


def create_pod(
    lab: str,
    name: str,
    *,
    node_netns: str,
    pod_cidr: IPv4Network,
    mtu: int,
    ip: IPv4Address | None = None,
) -> Pod:
    """Create the pod, or finish one a crash left half made; an existing pod keeps its address."""
    pod_ns = pod_netns(lab, name)
    lxc_name = host_ifname(name)
    if ip is not None:
        _check_address(ip, pod_cidr)
    if not netns.exists(node_netns):
        raise PodError(f"node namespace {node_netns} does not exist")
    with netns.iproute(node_netns) as node_ipr:
        holder = _endpoint_routes(node_ipr).get(ip) if ip is not None else None
        if holder is not None and holder.get_attr("RTA_OIF") != link_index(node_ipr, lxc_name):
            raise PodError(f"address {ip} is taken by another pod")
        netns.create(pod_ns)
        netns.write_sysctls(pod_ns, _NO_IPV6)
        with netns.iproute(pod_ns) as pod_ipr:
            address = _ensure_pod(
                node_ipr, pod_ipr, name=name, pod_ns=pod_ns, pod_cidr=pod_cidr, mtu=mtu, ip=ip
            )
    return Pod(name, pod_ns, node_netns, address, lxc_name)


def _ensure_pod(
    node_ipr: Any,
    pod_ipr: Any,
    *,
    name: str,
    pod_ns: str,
    pod_cidr: IPv4Network,
    mtu: int,
    ip: IPv4Address | None,
) -> IPv4Address:
    lxc_name = host_ifname(name)
    lxc = get_link(node_ipr, lxc_name)
    eth0 = get_link(pod_ipr, POD_DEVICE)
    if (lxc is None) != (eth0 is None):
        for ipr, link in ((node_ipr, lxc), (pod_ipr, eth0)):
            if link is not None:
                with netlink_op(f"delete half a pod veth pair {link.get_attr('IFLA_IFNAME')}"):
                    ipr.link("del", index=link["index"])
        lxc = None
    if lxc is None:
        with (
            open(netns.netns_path(pod_ns), "rb") as target,
            netlink_op(f"add link {lxc_name} type veth peer {POD_DEVICE} netns {pod_ns}"),
        ):
            node_ipr.link(
                "add",
                ifname=lxc_name,
                kind="veth",
                peer={"ifname": POD_DEVICE, "net_ns_fd": target.fileno()},
            )
        lxc = require_link(node_ipr, lxc_name)
    with netlink_op(f"set {lxc_name} alias {name} mtu {mtu} up"):
        node_ipr.link("set", index=lxc["index"], ifalias=name, mtu=mtu, state="up")
    address = _claim_address(node_ipr, lxc["index"], pod_cidr, ip)
    _configure_pod_side(pod_ipr, address, router_ip(pod_cidr), mtu)
    return address


def _configure_pod_side(ipr: Any, address: IPv4Address, gateway: IPv4Address, mtu: int) -> None:
    lo = require_link(ipr, "lo")
    if not is_up(lo):
        with netlink_op("set lo up"):
            ipr.link("set", index=lo["index"], state="up")
    index = require_link(ipr, POD_DEVICE)["index"]
    with netlink_op(f"set {POD_DEVICE} mtu {mtu} up"):
        ipr.link("set", index=index, mtu=mtu, state="up")
    for current, length in ipv4_addresses(ipr, index):
        if (current, length) != (str(address), 32):
            with netlink_op(f"delete address {current}/{length}"):
                ipr.addr("del", index=index, address=current, prefixlen=length)
    if (str(address), 32) not in ipv4_addresses(ipr, index):
        with netlink_op(f"add address {address}/32"):
            ipr.addr("add", index=index, address=str(address), prefixlen=32)
    with netlink_op(f"replace route {gateway}/32 dev {POD_DEVICE}"):
        ipr.route("replace", dst=str(gateway), dst_len=32, oif=index, scope=RT_SCOPE_LINK)
    with netlink_op(f"replace default route via {gateway}"):
        ipr.route("replace", dst="0.0.0.0", dst_len=0, gateway=str(gateway), oif=index)


def delete_pod(lab: str, name: str, *, node_netns: str) -> None:
    """Remove the pod: its lxc device (and so its /32 route), the namespace and any process inside."""
    if netns.exists(node_netns):
        with netns.iproute(node_netns) as ipr:
            lxc = get_link(ipr, host_ifname(name))
            if lxc is not None:
                with netlink_op(f"delete link {host_ifname(name)}"):
                    ipr.link("del", index=lxc["index"])
    netns.delete(pod_netns(lab, name))


def list_pods(lab: str, node_netns: str) -> list[Pod]:
    """The pods attached to a node, read from its lxc devices and their /32 routes."""
    pods = []
    with netns.iproute(node_netns) as ipr:
        by_index = {route.get_attr("RTA_OIF"): ip for ip, route in _endpoint_routes(ipr).items()}
        for link in ipr.link("dump"):
            name = link.get_attr("IFLA_IFALIAS")
            ifname = link.get_attr("IFLA_IFNAME")
            if name and _is_pod_name(name) and ifname == host_ifname(name) and link["index"] in by_index:
                pods.append(Pod(name, pod_netns(lab, name), node_netns, by_index[link["index"]], ifname))
    return sorted(pods, key=lambda pod: pod.name)
