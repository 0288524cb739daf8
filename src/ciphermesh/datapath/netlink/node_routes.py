"""Node encryption's routing: host traffic to peers' node IPs into the engine's TUN, never its own packets.

Table 51 (proto PROTO_NODE_ENCRYPTION), per peer node IP: `dev <tun> src <local node IP> mtu <pod MTU>`
over an `unreachable` /32 at a higher metric, so host traffic to that peer is dropped, not sent in clear,
while the TUN is gone. Rule `priority 49 fwmark 0/0xf00 lookup 51` consults the table for every packet
except those the engines marked as their own (ESP, WireGuard UDP and the VXLAN packets around ESP), which
would otherwise be routed back into the engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from ciphermesh.datapath.netlink.engine_routes import FAIL_CLOSED_METRIC, TUN_METRIC
from ciphermesh.datapath.netlink.route_set import OwnedRoute, converge_routes
from ciphermesh.datapath.netlink.rules import OwnedRule, ensure_rule, remove_rules
from ciphermesh.rtnl import RTN_UNICAST, RTN_UNREACHABLE, ensure_link_up, get_link
from ciphermesh.rtnl.changes import Changes
from ciphermesh.rtnl.errors import DeviceMissingError
from ciphermesh.rtnl.ownership import (
    NODE_RULE_PRIORITY,
    NODE_TABLE,
    PROTO_NODE_ENCRYPTION,
    TUNNEL_MARK_MASK,
)

NODE_RULE = OwnedRule(
    NODE_RULE_PRIORITY, NODE_TABLE, PROTO_NODE_ENCRYPTION, fwmark=0, fwmask=TUNNEL_MARK_MASK
)


def reconcile_node_routing(
    ipr: Any,
    *,
    tun: str,
    local_node_ip: IPv4Address,
    peers: Iterable[IPv4Address],
    blocked: Iterable[IPv4Address] = (),
    mtu: int,
) -> Changes:
    """Route host traffic to `peers` through `tun`; `blocked` node IPs get only the `unreachable` route.

    Without `tun` every one of them is unreachable, then DeviceMissingError.
    """
    encrypted = {IPv4Network(ip) for ip in peers}
    held = {IPv4Network(ip) for ip in blocked} - encrypted
    changes = Changes()
    fail_closed = {OwnedRoute(dst, FAIL_CLOSED_METRIC, RTN_UNREACHABLE) for dst in encrypted | held}
    link = get_link(ipr, tun)
    if link is None:
        converge_routes(ipr, fail_closed, table=NODE_TABLE, proto=PROTO_NODE_ENCRYPTION, tun=tun,
                        changes=changes)
        ensure_rule(ipr, NODE_RULE, changes)
        raise DeviceMissingError(f"TUN device {tun} not found: peers' node IPs stay unreachable")
    ensure_link_up(ipr, link, mtu, changes)
    via_tun = {
        OwnedRoute(dst, TUN_METRIC, RTN_UNICAST, link["index"], str(local_node_ip), mtu) for dst in encrypted
    }
    # Routes before the rule: the rule never sends a packet to a table that lacks its route yet.
    converge_routes(ipr, fail_closed | via_tun, table=NODE_TABLE, proto=PROTO_NODE_ENCRYPTION, tun=tun,
                    changes=changes)
    ensure_rule(ipr, NODE_RULE, changes)
    return changes


def remove_node_routing(ipr: Any) -> Changes:
    """Remove the rule first, then the routes: host traffic goes back to the main table, in clear."""
    changes = Changes()
    remove_rules(ipr, PROTO_NODE_ENCRYPTION, changes)
    converge_routes(ipr, set(), table=NODE_TABLE, proto=PROTO_NODE_ENCRYPTION, tun=None, changes=changes)
    return changes
