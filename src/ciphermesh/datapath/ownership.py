"""Numbers that mark kernel routing objects as ours: a reconcile removes its stale ones and nothing else."""

from __future__ import annotations

# Route protocol numbers (`ip route ... proto N`), one per owner; outside iproute2's rt_protos registry.
PROTO_VXLAN_PEER = 150
PROTO_ENGINE = 151
PROTO_ENDPOINT = 152
PROTO_OVERLAY = 153

# Table of the /32 routes to peers' router IPs via cilium_vxlan, reached only by the ESP rule (50 as in IP
# protocol 50); the rule sits before `main` (32766) and after `local` (0).
ESP_TABLE = 50
ESP_RULE_PRIORITY = 50

MAIN_TABLE = 254
