"""The datapath's face: all the agent and the lab use of it. The desired state itself is in `desired`."""

from __future__ import annotations

from ciphermesh.datapath.engine import (
    ENGINE_KINDS,
    EncryptedMode,
    Engine,
    EngineKind,
    EngineNotBuiltError,
)
from ciphermesh.datapath.engines import open_engine
from ciphermesh.datapath.mtu import ETHERNET_MTU, Mtus, plan_mtus
from ciphermesh.datapath.netlink.links import CILIUM_VXLAN, UNDERLAY_DEVICE, VXLAN_PORT, router_ip
from ciphermesh.datapath.netlink.strict_guard import StrictGuard
from ciphermesh.datapath.node import NodeDatapath, PodCIDRConflictError
from ciphermesh.rtnl.errors import DatapathError

__all__ = [
    "CILIUM_VXLAN",
    "ENGINE_KINDS",
    "ETHERNET_MTU",
    "UNDERLAY_DEVICE",
    "VXLAN_PORT",
    "DatapathError",
    "EncryptedMode",
    "Engine",
    "EngineKind",
    "EngineNotBuiltError",
    "Mtus",
    "NodeDatapath",
    "PodCIDRConflictError",
    "StrictGuard",
    "open_engine",
    "plan_mtus",
    "router_ip",
]
