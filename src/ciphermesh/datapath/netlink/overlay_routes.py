"""Routing with encryption off: remote pod CIDRs via the peer's router IP over cilium_vxlan, as flannel does.

Main table (proto PROTO_OVERLAY), per remote pod CIDR: `via <peer router IP> dev cilium_vxlan onlink src
<local router IP> mtu <pod MTU>`.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from ciphermesh.datapath.desired import RemoteNode
from ciphermesh.datapath.netlink.links import CILIUM_VXLAN
from ciphermesh.rtnl import delete_route, netlink_op, require_link, route_dst, route_mtu
from ciphermesh.rtnl.changes import Changes
from ciphermesh.rtnl.ownership import MAIN_TABLE, PROTO_OVERLAY

_Key = tuple[IPv4Network, str, str, int]
# The gateway is the peer's router IP, reachable on cilium_vxlan through its permanent neighbour entry.
RTNH_F_ONLINK = 4


def reconcile_overlay_routing(
    ipr: Any, *, local_router_ip: IPv4Address, remotes: Iterable[RemoteNode], mtu: int
) -> Changes:
    """Make the plain overlay routes match `remotes`, removing only stale routes of our own."""
    index = require_link(ipr, CILIUM_VXLAN)["index"]
    desired: dict[IPv4Network, _Key] = {
        cidr: (cidr, str(remote.router_ip), str(local_router_ip), mtu)
        for remote in remotes
        for cidr in remote.pod_cidrs
    }
    changes = Changes()
    current: dict[IPv4Network, _Key] = {}
    for route in ipr.route("dump", table=MAIN_TABLE, proto=PROTO_OVERLAY, family=2):
        dst = IPv4Network(route_dst(route))
        key = (dst, route.get_attr("RTA_GATEWAY"), route.get_attr("RTA_PREFSRC"), route_mtu(route))
        if desired.get(dst) == key and dst not in current:
            current[dst] = key
            continue
        delete_route(ipr, route)
        changes.removed.append(f"route {dst} via {key[1]}")
    for dst, (_, gateway, prefsrc, route_mtu_value) in desired.items():
        if dst in current:
            continue
        what = f"route {dst} via {gateway} dev {CILIUM_VXLAN} src {prefsrc} mtu {route_mtu_value}"
        with netlink_op(f"replace {what}"):
            ipr.route(
                "replace",
                dst=str(dst.network_address),
                dst_len=dst.prefixlen,
                gateway=gateway,
                oif=index,
                flags=RTNH_F_ONLINK,
                prefsrc=prefsrc,
                table=MAIN_TABLE,
                proto=PROTO_OVERLAY,
                metrics={"mtu": route_mtu_value},
            )
        changes.added.append(what)
    return changes


def remove_overlay_routing(ipr: Any) -> Changes:
    changes = Changes()
    for route in ipr.route("dump", table=MAIN_TABLE, proto=PROTO_OVERLAY, family=2):
        delete_route(ipr, route)
        changes.removed.append(f"route {route_dst(route)}")
    return changes
