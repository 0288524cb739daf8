"""Small helpers over pyroute2's rtnetlink messages: attributes, links, and errors with context."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from ciphermesh.rtnl.changes import Changes
from ciphermesh.rtnl.errors import DatapathError, DeviceMissingError

NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTN_UNICAST = 1
RTN_UNREACHABLE = 7
RT_SCOPE_LINK = 253
IFF_UP = 0x1


@contextmanager
def netlink_op(what: str) -> Iterator[None]:
    """Turn a netlink refusal into a DatapathError that names the object, e.g. `add route 10.0.2.0/24`."""
    try:
        yield
    except NetlinkError as exc:
        raise DatapathError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}") from exc


def link_index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def get_link(ipr: Any, name: str) -> Any | None:
    index = link_index(ipr, name)
    return ipr.link("get", index=index)[0] if index is not None else None


def link_kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def link_info_data(link: Any) -> Any | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_DATA") if info is not None else None


def is_up(link: Any) -> bool:
    return bool(link["flags"] & IFF_UP)


def route_mtu(route: Any) -> int | None:
    metrics = route.get_attr("RTA_METRICS")
    return metrics.get_attr("RTAX_MTU") if metrics is not None else None


def ipv4_addresses(ipr: Any, index: int) -> list[tuple[str, int]]:
    """(address, prefix length) of every IPv4 address on the link."""
    return [
        (msg.get_attr("IFA_ADDRESS"), msg["prefixlen"]) for msg in ipr.addr("dump", index=index, family=2)
    ]


def route_dst(route: Any) -> str:
    return f"{route.get_attr('RTA_DST') or '0.0.0.0'}/{route['dst_len']}"


def delete_route(ipr: Any, route: Any) -> None:
    """Delete exactly the dumped route: scope, type, protocol and metric all match, so no neighbour goes."""
    with netlink_op(f"delete route {route_dst(route)} table {route.get_attr('RTA_TABLE') or route['table']}"):
        ipr.route(
            "del",
            dst=route.get_attr("RTA_DST") or "0.0.0.0",
            dst_len=route["dst_len"],
            table=route.get_attr("RTA_TABLE") or route["table"],
            type=route["type"],
            scope=route["scope"],
            proto=route["proto"],
            priority=route.get_attr("RTA_PRIORITY") or 0,
            tos=route["tos"],
        )


def require_link(ipr: Any, name: str) -> Any:
    link = get_link(ipr, name)
    if link is None:
        raise DeviceMissingError(f"device {name} not found")
    return link


def ensure_link_up(ipr: Any, link: Any, mtu: int | None, changes: Changes) -> None:
    """The dumped link up, with `mtu` unless None; what was changed goes into `changes`."""
    name = link.get_attr("IFLA_IFNAME")
    if mtu is not None and link.get_attr("IFLA_MTU") != mtu:
        with netlink_op(f"set {name} mtu {mtu}"):
            ipr.link("set", index=link["index"], mtu=mtu)
        changes.added.append(f"link {name} mtu {mtu}")
    if not is_up(link):
        with netlink_op(f"set {name} up"):
            ipr.link("set", index=link["index"], state="up")
        changes.added.append(f"link {name} up")
