"""The kernel IPsec engine: Cilium's XFRM states and policies over netlink, steering marks by nftables.

The kernel encrypts, so its SAs, their sequence numbers and the steering outlive the agent (as Cilium's
do), and a restarted agent adopts them: node IDs come back from the marks of the states it finds, and a
reconcile changes only what differs.
"""

from __future__ import annotations

import os
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from ciphermesh.datapath.desired import DesiredDatapath, IPsecEngineState
from ciphermesh.datapath.engine import EngineKind
from ciphermesh.datapath.kernel.ipsec.layout import is_ours, peer_of, plan_layout
from ciphermesh.datapath.kernel.ipsec.marks import node_id_of
from ciphermesh.datapath.kernel.ipsec.node_ids import NodeIDs
from ciphermesh.datapath.kernel.ipsec.reconcile import departed_states, plan_changes
from ciphermesh.datapath.kernel.ipsec.routes import reconcile_ipsec_routing
from ciphermesh.datapath.kernel.ipsec.status import kernel_status, read_xfrm_stat
from ciphermesh.datapath.kernel.ipsec.steering import Steering, apply_steering
from ciphermesh.datapath.kernel.xfrm.model import State
from ciphermesh.datapath.kernel.xfrm.netlink_socket import XfrmSocket

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
CACHE_SECONDS = 60.0


def kernel_boot_id(path: Path = BOOT_ID) -> str:
    """The kernel's boot ID, which per-tunnel keys carry: kernel SAs live exactly as long as it."""
    return path.read_text().strip()


def restored_node_ids(states: list[State], local: IPv4Address) -> dict[IPv4Address, int]:
    """Peer tunnel IP -> node ID, from the marks of the kernel's Cilium states."""
    found: dict[IPv4Address, int] = {}
    for state in states:
        node_id = node_id_of(state.mark) if is_ours(state) and state.mark is not None else None
        if node_id is not None and (peer := peer_of(state, local)) is not None:
            found.setdefault(peer, node_id)
    return found


class KernelIPsec:
    """Keeps the kernel's XFRM objects, steering and table 200 at what `apply` was last given."""

    def __init__(self, *, mtu: int) -> None:
        """Opened in the node's namespace: its sockets, and nft run later from any thread, stay there."""
        self._mtu = mtu
        self._netns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._ipr = IPRoute()
        self._xfrm = XfrmSocket()
        # The agent's status thread asks while its main loop applies: one netlink conversation at a time
        # on the socket, or a dump's replies interleave with a change's acknowledgements.
        self._lock = threading.Lock()
        self._node_ids: NodeIDs | None = None
        self._applied: IPsecEngineState | None = None
        # What table 200 and nftables were last given: with 1000 peers dumping 1000 routes to find them
        # unchanged costs more than the whole XFRM reconcile, and a rotation changes only the marks. As
        # Cilium's XFRM state cache, it is trusted for a minute; then a hand-made change is repaired.
        self._routed: tuple[object, ...] | None = None
        self._steered: Steering | None = None
        self._checked = 0.0

    @property
    def kind(self) -> EngineKind:
        return "kernel"

    @property
    def device(self) -> str | None:
        return None

    def apply(self, desired: DesiredDatapath) -> None:
        engine = desired.engine
        if engine is None:
            raise ValueError(f"the IPsec engine cannot apply a {desired.mode} datapath (no IPsec state)")
        with self._lock:
            self._apply(engine)

    def _apply(self, engine: IPsecEngineState) -> None:
        states, policies = self._xfrm.states(), self._xfrm.policies()
        if self._node_ids is None:
            self._node_ids = NodeIDs(restored_node_ids(states, engine.local_router_ip))
        layout = plan_layout(engine, self._node_ids, departed_states(engine, states, self._node_ids))
        plan = plan_changes(layout, states, policies)
        self._xfrm.apply(plan.adds)
        if time.monotonic() - self._checked > CACHE_SECONDS:
            self._routed = self._steered = None
            self._checked = time.monotonic()
        routed = (engine.local_router_ip, frozenset(layout.steering.out_marks), self._mtu)
        if routed != self._routed:
            reconcile_ipsec_routing(self._ipr, local_router_ip=engine.local_router_ip,
                                    remote_cidrs=layout.steering.out_marks, mtu=self._mtu)
            self._routed = routed
        if layout.steering != self._steered:
            apply_steering(layout.steering, netns_fd=self._netns)
            self._steered = layout.steering
        self._xfrm.apply(plan.removes)
        self._applied = engine

    def status(self, *, reveal: bool = False) -> dict[str, Any] | None:
        with self._lock:
            states = self._xfrm.states()
        return {"engine": self.kind, **kernel_status(self._applied, states, read_xfrm_stat(), reveal=reveal)}

    def close(self) -> None:
        """Close the socket only: the kernel goes on encrypting with the SAs (Cilium leaves them too)."""
        if self._netns < 0:
            return
        with self._lock:
            self._xfrm.close()
        self._ipr.close()
        os.close(self._netns)
        self._netns = -1
