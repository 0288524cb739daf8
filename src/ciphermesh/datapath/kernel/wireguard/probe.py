"""Can this kernel run WireGuard? Create a throwaway `wireguard` link and delete it, in this namespace."""

from __future__ import annotations

import contextlib
import errno
import secrets
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ciphermesh.datapath.kernel.wireguard.link import WIREGUARD_KIND

# What a link add says when the kernel knows no `wireguard` kind: rtnetlink's "Unknown device type".
NO_WIREGUARD = frozenset({errno.EOPNOTSUPP})
# Python names errno 95 ENOTSUP; rtnetlink and Cilium's message say EOPNOTSUPP.
_NAMES = {errno.EOPNOTSUPP: "EOPNOTSUPP"}
PROBE_PREFIX = "cm-wgprobe-"


@dataclass(frozen=True)
class WireGuardProbe:
    """The probe's answer; `reason` says why, `errno` is the refusal's (None when WireGuard works)."""

    available: bool
    reason: str
    errno: int | None = None


def probe_kernel_wireguard() -> WireGuardProbe:
    """Add a `wireguard` link under a random name and delete it; refusals other than EOPNOTSUPP raise."""
    name = PROBE_PREFIX + secrets.token_hex(2)
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=name, kind=WIREGUARD_KIND)
        except NetlinkError as exc:
            if exc.code in NO_WIREGUARD:
                return WireGuardProbe(
                    False,
                    f"no kernel WireGuard: a wireguard link add failed with {_NAMES[exc.code]}",
                    exc.code,
                )
            raise
        for index in ipr.link_lookup(ifname=name):
            with contextlib.suppress(NetlinkError):  # gone already: nothing left behind either way
                ipr.link("del", index=index)
    return WireGuardProbe(True, "kernel WireGuard works: a wireguard link was added and deleted")
