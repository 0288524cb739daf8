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
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from ciphermesh.datapath.changes import Changes
from ciphermesh.datapath.errors import DeviceMissingError
from ciphermesh.datapath.ownership import ESP_RULE_PRIORITY, ESP_TABLE, MAIN_TABLE, PROTO_ENGINE
from ciphermesh.datapath.rtnl import (
    RTN_UNICAST,
    RTN_UNREACHABLE,
    delete_route,
    get_link,
    is_up,
    netlink_op,
    route_dst,
    route_mtu,
)

IPPROTO_ESP = 50
TUN_METRIC = 10
FAIL_CLOSED_METRIC = 4096
_FR_ACT_TO_TBL = 1


@dataclass(frozen=True)
class RemoteNode:
    """A peer as the engine routes to it: its router IP lies in one of its pod CIDRs."""

    router_ip: IPv4Address
    pod_cidrs: tuple[IPv4Network, ...]


@dataclass(frozen=True)
class _Route:
    dst: IPv4Network
    metric: int
    kind: int
    oif: int | None = None
    prefsrc: str | None = None
    mtu: int | None = None

    def describe(self, tun: str | None) -> str:
        """In `ip route` terms; a route being removed is named by destination and metric alone."""
        if self.kind == RTN_UNREACHABLE:
            return f"route unreachable {self.dst} metric {self.metric}"
        if tun is None:
            return f"route {self.dst} metric {self.metric}"
        return f"route {self.dst} dev {tun} src {self.prefsrc} mtu {self.mtu} metric {self.metric}"


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
    tun: str,
    local_router_ip: IPv4Address,
    local_pod_cidrs: Iterable[IPv4Network],
    remotes: Iterable[RemoteNode],
    mtu: int,
    blocked: Iterable[IPv4Network] = (),
) -> Changes:
    """Make the rule and the main-table routes match; without `tun`, fail closed, then DeviceMissingError.

    `blocked`: remote pod CIDRs the engine cannot carry yet; they get only the `unreachable` route.
    """
    local = (*local_pod_cidrs, *blocked)
    remote_cidrs = _check(local, remotes)
    changes = Changes()
    _ensure_esp_table_floor(ipr, changes)
    _ensure_esp_rule(ipr, changes)
    fail_closed = {_Route(cidr, FAIL_CLOSED_METRIC, RTN_UNREACHABLE) for cidr in (*local, *remote_cidrs)}
    link = get_link(ipr, tun)
    if link is None:
        _converge_routes(ipr, fail_closed, tun, changes)
        raise DeviceMissingError(f"TUN device {tun} not found: remote pod CIDRs stay unreachable")
    if link.get_attr("IFLA_MTU") != mtu:
        with netlink_op(f"set {tun} mtu {mtu}"):
            ipr.link("set", index=link["index"], mtu=mtu)
        changes.added.append(f"link {tun} mtu {mtu}")
    if not is_up(link):
        with netlink_op(f"set {tun} up"):
            ipr.link("set", index=link["index"], state="up")
        changes.added.append(f"link {tun} up")
    via_tun = {
        _Route(cidr, TUN_METRIC, RTN_UNICAST, link["index"], str(local_router_ip), mtu)
        for cidr in remote_cidrs
    }
    _converge_routes(ipr, fail_closed | via_tun, tun, changes)
    return changes


def remove_engine_routing(ipr: Any) -> Changes:
    """Remove the engine's rule and routes (the fail-closed ones too): for switching engines or teardown."""
    changes = Changes()
    for rule in _own_rules(ipr):
        _delete_rule(ipr, rule, changes)
    for route in _esp_table_floor(ipr):
        delete_route(ipr, route)
        changes.removed.append(f"route unreachable default table {ESP_TABLE}")
    _converge_routes(ipr, set(), None, changes)
    return changes


def _own_rules(ipr: Any) -> list[Any]:
    return [rule for rule in ipr.rule("dump", family=2) if rule.get_attr("FRA_PROTOCOL") == PROTO_ENGINE]


def _rule_matches(rule: Any) -> bool:
    return (
        rule.get_attr("FRA_PRIORITY") == ESP_RULE_PRIORITY
        and (rule.get_attr("FRA_TABLE") or rule["table"]) == ESP_TABLE
        and rule.get_attr("FRA_IP_PROTO") == IPPROTO_ESP
        and rule.get_attr("FRA_IIFNAME") == "lo"
        and rule["action"] == _FR_ACT_TO_TBL
        and rule["dst_len"] == 0
        and rule["src_len"] == 0
        and rule.get_attr("FRA_FWMARK") is None
    )


def _delete_rule(ipr: Any, rule: Any, changes: Changes) -> None:
    priority = rule.get_attr("FRA_PRIORITY")
    with netlink_op(f"delete rule priority {priority}"):
        ipr.rule("del", priority=priority, protocol=PROTO_ENGINE)
    changes.removed.append(f"rule priority {priority} proto {PROTO_ENGINE}")


def _ensure_esp_rule(ipr: Any, changes: Changes) -> None:
    rules = _own_rules(ipr)
    if len(rules) == 1 and _rule_matches(rules[0]):
        return
    for rule in rules:
        _delete_rule(ipr, rule, changes)
    what = f"rule priority {ESP_RULE_PRIORITY} iif lo ipproto esp lookup {ESP_TABLE}"
    with netlink_op(f"add {what}"):
        ipr.rule(
            "add",
            priority=ESP_RULE_PRIORITY,
            table=ESP_TABLE,
            ip_proto=IPPROTO_ESP,
            iifname="lo",
            protocol=PROTO_ENGINE,
        )
    changes.added.append(what)


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


def _current_routes(ipr: Any) -> dict[_Route, Any]:
    current = {}
    for route in ipr.route("dump", table=MAIN_TABLE, proto=PROTO_ENGINE, family=2):
        dst = IPv4Network(route_dst(route))
        metric = route.get_attr("RTA_PRIORITY") or 0
        if route["type"] == RTN_UNREACHABLE:
            current[_Route(dst, metric, RTN_UNREACHABLE)] = route
        else:
            oif, prefsrc = route.get_attr("RTA_OIF"), route.get_attr("RTA_PREFSRC")
            current[_Route(dst, metric, route["type"], oif, prefsrc, route_mtu(route))] = route
    return current


def _converge_routes(ipr: Any, desired: set[_Route], tun: str | None, changes: Changes) -> None:
    current = _current_routes(ipr)
    # Add before removing, fail-closed routes first: a remote CIDR is never without a route.
    for route in sorted(desired - current.keys(), key=lambda r: r.kind != RTN_UNREACHABLE):
        spec: dict[str, Any] = {
            "dst": str(route.dst.network_address),
            "dst_len": route.dst.prefixlen,
            "priority": route.metric,
            "table": MAIN_TABLE,
            "type": route.kind,
            "proto": PROTO_ENGINE,
        }
        if route.kind == RTN_UNICAST:
            spec.update(oif=route.oif, prefsrc=route.prefsrc, metrics={"mtu": route.mtu})
        with netlink_op(f"add {route.describe(tun)}"):
            ipr.route("replace", **spec)
        changes.added.append(route.describe(tun))
    replaced = {(route.dst, route.metric) for route in desired}
    for route, message in current.items():
        if route in desired or (route.dst, route.metric) in replaced:
            continue
        delete_route(ipr, message)
        changes.removed.append(route.describe(None))
