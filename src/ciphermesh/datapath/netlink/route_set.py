"""A set of owned routes in one table, converged in place: fail-closed routes first, stale ones last."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from ciphermesh.rtnl import (
    RTN_UNICAST,
    RTN_UNREACHABLE,
    delete_route,
    netlink_op,
    route_dst,
    route_mtu,
)
from ciphermesh.rtnl.changes import Changes
from ciphermesh.rtnl.ownership import MAIN_TABLE


@dataclass(frozen=True)
class OwnedRoute:
    """One route as we install it: `unreachable`, or unicast out a device with a source and an MTU."""

    dst: IPv4Network
    metric: int
    kind: int
    oif: int | None = None
    prefsrc: str | None = None
    mtu: int | None = None

    def describe(self, tun: str | None, table: int) -> str:
        """In `ip route` terms; a route being removed is named by destination and metric alone."""
        where = "" if table == MAIN_TABLE else f" table {table}"
        if self.kind == RTN_UNREACHABLE:
            return f"route unreachable {self.dst} metric {self.metric}{where}"
        if tun is None:
            return f"route {self.dst} metric {self.metric}{where}"
        return f"route {self.dst} dev {tun} src {self.prefsrc} mtu {self.mtu} metric {self.metric}{where}"



def current_routes(ipr: Any, *, table: int, proto: int) -> dict[OwnedRoute, Any]:
    """Our IPv4 routes in `table`, each with the dumped message that deletes it."""
    current = {}
    for route in ipr.route("dump", table=table, proto=proto, family=2):
        dst = IPv4Network(route_dst(route))
        metric = route.get_attr("RTA_PRIORITY") or 0
        if route["type"] == RTN_UNREACHABLE:
            current[OwnedRoute(dst, metric, RTN_UNREACHABLE)] = route
        else:
            oif, prefsrc = route.get_attr("RTA_OIF"), route.get_attr("RTA_PREFSRC")
            current[OwnedRoute(dst, metric, route["type"], oif, prefsrc, route_mtu(route))] = route
    return current


def converge_routes(
    ipr: Any, desired: set[OwnedRoute], *, table: int, proto: int, tun: str | None, changes: Changes
) -> None:
    """Make our routes in `table` exactly `desired`, so that a destination is never without a route."""
    current = current_routes(ipr, table=table, proto=proto)
    # Add before removing, fail-closed routes first.
    for route in sorted(desired - current.keys(), key=lambda r: r.kind != RTN_UNREACHABLE):
        spec: dict[str, Any] = {
            "dst": str(route.dst.network_address),
            "dst_len": route.dst.prefixlen,
            "priority": route.metric,
            "table": table,
            "type": route.kind,
            "proto": proto,
        }
        if route.kind == RTN_UNICAST:
            spec.update(oif=route.oif, prefsrc=route.prefsrc, metrics={"mtu": route.mtu})
        with netlink_op(f"add {route.describe(tun, table)}"):
            ipr.route("replace", **spec)
        changes.added.append(route.describe(tun, table))
    replaced = {(route.dst, route.metric) for route in desired}
    for route, message in current.items():
        if route in desired or (route.dst, route.metric) in replaced:
            continue
        delete_route(ipr, message)
        changes.removed.append(route.describe(None, table))
