"""The userspace engine's routing: remote pod CIDRs into its TUN device; only ESP goes straight to peers.

Main table (proto PROTO_ENGINE), per remote pod CIDR: a route `dev <tun> src <local router IP> mtu <pod MTU>`
and, below it at a higher metric, `unreachable`, which takes over the moment the TUN is gone, so packets
are dropped and never routed in plaintext. The local pod CIDR is `unreachable` too (pods have /32s).
Rule `priority 50 iif lo ipproto esp lookup 50`: only ESP this node sends itself reaches table 50, which
holds the /32 routes to peers' router IPs via cilium_vxlan over an `unreachable default`, so ESP never
falls through to the main table; health probes to those IPs use the TUN.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from ciphermesh.datapath.desired import RemoteNode
from ciphermesh.datapath.netlink.links import CILIUM_HOST
from ciphermesh.datapath.netlink.route_set import OwnedRoute, converge_routes
from ciphermesh.datapath.netlink.rules import OwnedRule, ensure_rule, remove_rules
from ciphermesh.rtnl import (
    RTN_UNICAST,
    RTN_UNREACHABLE,
    delete_route,
    ensure_link_up,
    get_link,
    netlink_op,
)
from ciphermesh.rtnl.changes import Changes
from ciphermesh.rtnl.errors import DeviceMissingError
from ciphermesh.rtnl.ownership import ESP_RULE_PRIORITY, ESP_TABLE, MAIN_TABLE, PROTO_ENGINE

IPPROTO_ESP = 50
TUN_METRIC = 10
FAIL_CLOSED_METRIC = 4096
ESP_RULE = OwnedRule(ESP_RULE_PRIORITY, ESP_TABLE, PROTO_ENGINE, ip_proto=IPPROTO_ESP, iifname="lo")


def _check(local_pod_cidrs: tuple[IPv4Network, ...], remotes: Iterable[RemoteNode]) -> list[IPv4Network]:
    seen = list(local_pod_cidrs)
    remote_cidrs = []
    for remote in remotes:
        if not any(remote.router_ip in cidr for cidr in remote.pod_cidrs):
            raise ValueError(f"router IP {remote.router_ip} lies outside its pod CIDRs")
        for cidr in remote.pod_cidrs:
            clash = next((other for other in seen if other.overlaps(cidr)), None)
            if clash is not None:
                raise ValueError(f"pod CIDR {cidr} overlaps {clash}")
            seen.append(cidr)
            remote_cidrs.append(cidr)
    return remote_cidrs


def reconcile_engine_routing(
    ipr: Any,
    *,
    tun: str | None,
    local_router_ip: IPv4Address,
    local_pod_cidrs: Iterable[IPv4Network],
    remotes: Iterable[RemoteNode],
    mtu: int,
    blocked: Iterable[IPv4Network] = (),
) -> Changes:
    """Make the rule and the main-table routes match; without the `tun` device, fail closed, then
    DeviceMissingError. `tun=None`: the engine steers by mark (kernel XFRM). A local packet needs a route
    before nftables can mark it, so remote pod CIDRs go to cilium_host, as in Cilium: a marked packet is
    rerouted to table 200 and XFRM; an unmarked one reaches cilium_net with a local source, a martian the
    kernel drops, so it never leaves the node.

    `blocked`: remote pod CIDRs the engine cannot carry yet; they get only the `unreachable` route.
    """
    local = (*local_pod_cidrs, *blocked)
    remote_cidrs = _check(local, remotes)
    changes = Changes()
    _ensure_esp_table_floor(ipr, changes)
    ensure_rule(ipr, ESP_RULE, changes)
    fail_closed = {OwnedRoute(cidr, FAIL_CLOSED_METRIC, RTN_UNREACHABLE) for cidr in (*local, *remote_cidrs)}
    device = CILIUM_HOST if tun is None else tun
    link = get_link(ipr, device)
    if link is None:
        converge_routes(ipr, fail_closed, table=MAIN_TABLE, proto=PROTO_ENGINE, tun=device, changes=changes)
        what = "device" if tun is None else "TUN device"
        raise DeviceMissingError(f"{what} {device} not found: remote pod CIDRs stay unreachable")
    if tun is not None:
        ensure_link_up(ipr, link, mtu, changes)
    via_tun = {
        OwnedRoute(cidr, TUN_METRIC, RTN_UNICAST, link["index"], str(local_router_ip), mtu)
        for cidr in remote_cidrs
    }
    desired = fail_closed | via_tun
    converge_routes(ipr, desired, table=MAIN_TABLE, proto=PROTO_ENGINE, tun=device, changes=changes)
    return changes


def remove_engine_routing(ipr: Any) -> Changes:
    """Remove the engine's rule and routes (the fail-closed ones too): for switching engines or teardown."""
    changes = Changes()
    remove_rules(ipr, PROTO_ENGINE, changes)
    for route in _esp_table_floor(ipr):
        delete_route(ipr, route)
        changes.removed.append(f"route unreachable default table {ESP_TABLE}")
    converge_routes(ipr, set(), table=MAIN_TABLE, proto=PROTO_ENGINE, tun=None, changes=changes)
    return changes


def _esp_table_floor(ipr: Any) -> list[Any]:
    return [
        route
        for route in ipr.route("dump", table=ESP_TABLE, proto=PROTO_ENGINE, family=2)
        if route["dst_len"] == 0
    ]


def _ensure_esp_table_floor(ipr: Any, changes: Changes) -> None:
    """An `unreachable default` in the ESP table: ESP to a peer whose /32 is (still) missing must not fall
    through to the main table, where the pod CIDR routes would carry it back into the engine."""
    if any(route["type"] == RTN_UNREACHABLE for route in _esp_table_floor(ipr)):
        return
    what = f"route unreachable default table {ESP_TABLE}"
    with netlink_op(f"add {what}"):
        ipr.route(
            "replace", dst="0.0.0.0", dst_len=0, table=ESP_TABLE, type=RTN_UNREACHABLE, proto=PROTO_ENGINE
        )
    changes.added.append(what)
