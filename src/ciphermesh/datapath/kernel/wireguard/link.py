"""cilium_wg0 as Cilium's agent makes it: a TUN of that name (the userspace engine's) is deleted, the
`wireguard` link created (or an existing one kept, peers and all), rp_filter off on it."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from ciphermesh.rtnl import get_link, link_kind, netlink_op
from ciphermesh.rtnl.errors import DatapathError

WIREGUARD_KIND = "wireguard"
SYSCTL_CONF = Path("/proc/sys/net/ipv4/conf")


class NoKernelWireGuardError(DatapathError):
    """The kernel refuses a `wireguard` link: it has no WireGuard (or the module is not loaded)."""


def add_wireguard_link(ipr: Any, ifname: str) -> None:
    """Create a `wireguard` link; EEXIST is fine, EOPNOTSUPP is NoKernelWireGuardError."""
    try:
        ipr.link("add", ifname=ifname, kind=WIREGUARD_KIND)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return
        if exc.code == errno.EOPNOTSUPP:
            raise NoKernelWireGuardError(f"add link {ifname} type wireguard: EOPNOTSUPP (no kernel WireGuard)"
                                         ) from exc
        raise DatapathError(f"add link {ifname} type wireguard: {exc.args[-1]}") from exc


def ensure_wireguard_link(ipr: Any, ifname: str) -> Any:
    """The `wireguard` link named `ifname`, dumped; another kind of link of that name is replaced."""
    link = get_link(ipr, ifname)
    if link is not None and link_kind(link) != WIREGUARD_KIND:
        # A TUN left by the userspace engine (Cilium deletes wireguard-go's the same way).
        with netlink_op(f"delete stale {link_kind(link) or 'link'} {ifname}"):
            ipr.link("del", index=link["index"])
        link = None
    if link is None:
        add_wireguard_link(ipr, ifname)
        link = get_link(ipr, ifname)
        if link is None:
            raise DatapathError(f"link {ifname} was added but is not there")
    # Replies arrive on cilium_wg0 from sources routed elsewhere (node IPs): strict rp_filter drops them.
    (SYSCTL_CONF / ifname / "rp_filter").write_text("0\n")
    return link
