"""Bring a TUN link up with an MTU and addresses (what wg-quick does with `ip link`/`ip address`)."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Interface, IPv6Interface

from pyroute2 import IPRoute

from ciphermesh.rtnl import netlink_op, require_link


def configure_link(name: str, *, mtu: int, addresses: Sequence[IPv4Interface | IPv6Interface]) -> None:
    """Set the MTU, add the addresses (existing ones are kept), and set the link up."""
    with IPRoute() as ipr:
        index = require_link(ipr, name)["index"]
        with netlink_op(f"set mtu {mtu} on {name}"):
            ipr.link("set", index=index, mtu=mtu)
        for address in addresses:
            with netlink_op(f"add address {address} to {name}"):
                ipr.addr("replace", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
        with netlink_op(f"set {name} up"):
            ipr.link("set", index=index, state="up")
