"""Policy routing for the kernel engine (reference/cilium-ipsec.md §3.4): `fwmark 0xe00/0xf00 lookup 200`.

Packets the steering marked for encryption, and the ESP that XFRM sends with output-mark 0xe00, are
routed by table 200: each remote pod CIDR out cilium_vxlan with the local router IP as source. Cilium
routes them to cilium_host, where its BPF adds the VXLAN header; without BPF the VXLAN device does it,
and its permanent neighbour entries for peers' router IPs carry the ESP to their nodes.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from ciphermesh.datapath.kernel.ipsec.marks import ENCRYPT_RULE_MARK, ROUTE_TABLE, RULE_PRIORITY
from ciphermesh.datapath.netlink.links import CILIUM_VXLAN
from ciphermesh.datapath.netlink.route_set import OwnedRoute, converge_routes
from ciphermesh.datapath.netlink.rules import OwnedRule, ensure_rule
from ciphermesh.rtnl import RTN_UNICAST, link_index
from ciphermesh.rtnl.changes import Changes
from ciphermesh.rtnl.errors import DeviceMissingError
from ciphermesh.rtnl.ownership import PROTO_KERNEL_IPSEC

ENCRYPT_RULE = OwnedRule(RULE_PRIORITY, ROUTE_TABLE, PROTO_KERNEL_IPSEC, fwmark=ENCRYPT_RULE_MARK.value,
                         fwmask=ENCRYPT_RULE_MARK.mask)
METRIC = 0


def reconcile_ipsec_routing(
    ipr: Any, *, local_router_ip: IPv4Address, remote_cidrs: Iterable[IPv4Network], mtu: int,
    vxlan: str = CILIUM_VXLAN,
) -> Changes:
    """The rule and table 200's routes, exactly; routes first, so a marked packet always finds one."""
    index = link_index(ipr, vxlan)
    if index is None:
        raise DeviceMissingError(f"device {vxlan} not found: create the node's links first")
    changes = Changes()
    source = str(local_router_ip)
    wanted = {OwnedRoute(cidr, METRIC, RTN_UNICAST, index, source, mtu) for cidr in remote_cidrs}
    converge_routes(ipr, wanted, table=ROUTE_TABLE, proto=PROTO_KERNEL_IPSEC, tun=vxlan, changes=changes)
    ensure_rule(ipr, ENCRYPT_RULE, changes)
    return changes
