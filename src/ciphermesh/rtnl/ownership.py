"""Numbers that mark kernel routing objects as ours: a reconcile removes its stale ones and nothing else."""

from __future__ import annotations

# Route protocol numbers (`ip route ... proto N`), one per owner; outside iproute2's rt_protos registry.
PROTO_VXLAN_PEER = 150
PROTO_ENGINE = 151
PROTO_ENDPOINT = 152
PROTO_OVERLAY = 153
# The kernel engine's rule `fwmark 0xe00/0xf00 lookup 200` and table 200's routes (Cilium's numbers).
PROTO_KERNEL_IPSEC = 155

# Table of the /32 routes to peers' router IPs via cilium_vxlan, reached only by the ESP rule (50 as in IP
# protocol 50); the rule sits before `main` (32766) and after `local` (0).
ESP_TABLE = 50
ESP_RULE_PRIORITY = 50

MAIN_TABLE = 254

# Node encryption: rule `priority 49 fwmark 0/0xf00 lookup 51` sends host traffic to peers' node IPs into the
# engine, except what the engines send themselves: their sockets mark it with Cilium's marks (ESP: output-mark
# 0xe00; WireGuard: fwmark 0x1e00), and VXLAN routes its outer packet with the inner packet's mark.
PROTO_NODE_ENCRYPTION = 154
NODE_TABLE = 51
NODE_RULE_PRIORITY = 49
TUNNEL_MARK_MASK = 0xF00
IPSEC_ENCRYPTED_MARK = 0xE00
WIREGUARD_MARK = 0x1E00
