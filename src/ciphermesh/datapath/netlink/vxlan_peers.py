"""Peers on cilium_vxlan, programmed as flannel's VXLAN backend does: neighbour, FDB entry and route per peer.

Per peer: a permanent neighbour entry (router IP -> the peer's VTEP MAC) on cilium_vxlan, an FDB entry
(that MAC -> the peer's node IP), and a /32 route to the router IP via cilium_vxlan with the local router
IP as source, in the table the caller names (the ESP table: only ESP reaches it).
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address
from typing import Any

from ciphermesh.datapath.desired import VxlanPeer
from ciphermesh.datapath.netlink.links import CILIUM_VXLAN
from ciphermesh.rtnl import (
    NTF_SELF,
    NUD_PERMANENT,
    RTN_UNICAST,
    delete_route,
    link_index,
    netlink_op,
    route_dst,
)
from ciphermesh.rtnl.changes import Changes
from ciphermesh.rtnl.errors import DeviceMissingError
from ciphermesh.rtnl.ownership import PROTO_VXLAN_PEER


def _check_peers(local_router_ip: IPv4Address, peers: Iterable[VxlanPeer]) -> dict[IPv4Address, VxlanPeer]:
    by_router: dict[IPv4Address, VxlanPeer] = {}
    for peer in peers:
        if peer.router_ip == local_router_ip:
            raise ValueError(f"peer router IP {peer.router_ip} is this node's own")
        known = by_router.get(peer.router_ip)
        if known is not None and known != peer:
            raise ValueError(
                f"router IP {peer.router_ip} claimed by nodes {known.node_ip} and {peer.node_ip}"
            )
        by_router[peer.router_ip] = peer
    return by_router


def reconcile_vxlan_peers(
    ipr: Any,
    *,
    local_router_ip: IPv4Address,
    peers: Iterable[VxlanPeer],
    table: int,
    vxlan: str = CILIUM_VXLAN,
) -> Changes:
    """Make cilium_vxlan's neighbours, FDB and peer routes exactly `peers`; stale ones are removed."""
    wanted = _check_peers(local_router_ip, peers)
    index = link_index(ipr, vxlan)
    if index is None:
        raise DeviceMissingError(f"device {vxlan} not found: create the node's links first")
    changes = Changes()
    _reconcile_routes(
        ipr,
        index=index,
        vxlan=vxlan,
        local_router_ip=local_router_ip,
        wanted=wanted,
        table=table,
        changes=changes,
    )
    _reconcile_fdb(ipr, index, vxlan, wanted, changes)
    _reconcile_neighbours(ipr, index, vxlan, wanted, changes)
    return changes


def _reconcile_neighbours(
    ipr: Any, index: int, vxlan: str, wanted: dict[IPv4Address, VxlanPeer], changes: Changes
) -> None:
    current = {}
    for entry in ipr.neigh("dump", ifindex=index, family=2):
        if entry["state"] & NUD_PERMANENT:
            current[IPv4Address(entry.get_attr("NDA_DST"))] = entry.get_attr("NDA_LLADDR")
    for router, mac in current.items():
        if router not in wanted:
            with netlink_op(f"delete neighbour {router} dev {vxlan}"):
                ipr.neigh("del", ifindex=index, dst=str(router), family=2)
            changes.removed.append(f"neigh {router} lladdr {mac} dev {vxlan}")
    for router, peer in wanted.items():
        if current.get(router) != peer.mac:
            with netlink_op(f"replace neighbour {router} lladdr {peer.mac} dev {vxlan}"):
                ipr.neigh("replace", ifindex=index, dst=str(router), lladdr=peer.mac, state=NUD_PERMANENT)
            changes.added.append(f"neigh {router} lladdr {peer.mac} dev {vxlan} permanent")


def _reconcile_fdb(
    ipr: Any, index: int, vxlan: str, wanted: dict[IPv4Address, VxlanPeer], changes: Changes
) -> None:
    current: dict[str, set[str]] = {}
    for entry in ipr.fdb("dump", ifindex=index):
        remote = entry.get_attr("NDA_DST")
        if remote is not None:
            current.setdefault(entry.get_attr("NDA_LLADDR"), set()).add(remote)
    desired = {peer.mac: str(peer.node_ip) for peer in wanted.values()}
    for mac, remotes in current.items():
        if remotes == {desired.get(mac)}:
            continue
        # A MAC with several remotes (appended entries) is rebuilt from scratch.
        for remote in sorted(remotes):
            with netlink_op(f"delete fdb {mac} dst {remote} dev {vxlan}"):
                ipr.fdb("del", ifindex=index, lladdr=mac, dst=remote, flags=NTF_SELF)
            changes.removed.append(f"fdb {mac} dst {remote} dev {vxlan}")
    for mac, remote in desired.items():
        if current.get(mac) != {remote}:
            with netlink_op(f"replace fdb {mac} dst {remote} dev {vxlan}"):
                ipr.fdb("replace", ifindex=index, lladdr=mac, dst=remote, state=NUD_PERMANENT, flags=NTF_SELF)
            changes.added.append(f"fdb {mac} dst {remote} dev {vxlan} self permanent")


def _reconcile_routes(
    ipr: Any,
    *,
    index: int,
    vxlan: str,
    local_router_ip: IPv4Address,
    wanted: dict[IPv4Address, VxlanPeer],
    table: int,
    changes: Changes,
) -> None:
    current: dict[IPv4Address, tuple[int | None, str | None]] = {}
    for route in ipr.route("dump", table=table, proto=PROTO_VXLAN_PEER, family=2):
        dst = IPv4Address(route.get_attr("RTA_DST") or "0.0.0.0")
        if route["dst_len"] == 32 and route["type"] == RTN_UNICAST and dst in wanted and dst not in current:
            current[dst] = (route.get_attr("RTA_OIF"), route.get_attr("RTA_PREFSRC"))
            continue
        delete_route(ipr, route)
        changes.removed.append(f"route {route_dst(route)} table {table}")
    for router in wanted:
        if current.get(router) != (index, str(local_router_ip)):
            # Not `onlink`: this kernel refuses it together with a source address.
            what = f"route {router}/32 dev {vxlan} src {local_router_ip} table {table}"
            with netlink_op(f"replace {what}"):
                ipr.route(
                    "replace",
                    dst=str(router),
                    dst_len=32,
                    oif=index,
                    prefsrc=str(local_router_ip),
                    table=table,
                    proto=PROTO_VXLAN_PEER,
                )
            changes.added.append(what)
