"""The datapath's face: all the agent and the lab use of it. The desired state itself is in `desired`."""

from __future__ import annotations

from ciphermesh.datapath.engine import (
    ENGINE_KINDS,
    EncryptedMode,
    Engine,
    EngineKind,
)
from ciphermesh.datapath.engines import open_engine
from ciphermesh.datapath.kernel.ipsec.engine import kernel_boot_id
from ciphermesh.datapath.kernel.wireguard.probe import WireGuardProbe, probe_kernel_wireguard
from ciphermesh.datapath.kernel.xfrm.probe import EspProbe, probe_kernel_esp
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
    "EspProbe",
    "Mtus",
    "NodeDatapath",
    "PodCIDRConflictError",
    "StrictGuard",
    "WireGuardProbe",
    "kernel_boot_id",
    "open_engine",
    "plan_mtus",
    "probe_kernel_esp",
    "probe_kernel_wireguard",
    "router_ip",
]
