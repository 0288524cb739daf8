"""One node's datapath: links, the strict-mode guard, the engine and the routes, applied in that order."""

from __future__ import annotations

import contextlib
import logging
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from ciphermesh.datapath.desired import DesiredDatapath, Mode
from ciphermesh.datapath.engine import Engine, EngineKind
from ciphermesh.datapath.engines import open_engine
from ciphermesh.datapath.mtu import Mtus, plan_mtus
from ciphermesh.datapath.netlink.engine_routes import reconcile_engine_routing, remove_engine_routing
from ciphermesh.datapath.netlink.links import NodeLinks, ensure_node_links, pod_cidr_conflict, router_ip
from ciphermesh.datapath.netlink.node_routes import reconcile_node_routing, remove_node_routing
from ciphermesh.datapath.netlink.overlay_routes import reconcile_overlay_routing, remove_overlay_routing
from ciphermesh.datapath.netlink.strict_guard import StrictGuard, apply_guard, read_drops, remove_guard
from ciphermesh.datapath.netlink.vxlan_peers import reconcile_vxlan_peers
from ciphermesh.rtnl.errors import DatapathError
from ciphermesh.rtnl.ownership import ESP_TABLE, MAIN_TABLE
from ciphermesh.wireguard.keys import PrivateKey

log = logging.getLogger(__name__)


def _routing_of(desired: DesiredDatapath) -> tuple[object, ...]:
    """The parts of a plan that links and routes follow (SAs and WireGuard peers are the engines')."""
    return (desired.mode, desired.vxlan_peers, desired.remotes, desired.blocked, desired.node_peers,
            desired.blocked_nodes)


class PodCIDRConflictError(DatapathError):
    """A pod CIDR the node must not take: it overlaps the node's own network."""


class NodeDatapath:
    """The kernel objects and engine of one node; `start` once its pod CIDR is known, `close` at the end."""

    def __init__(
        self, ipr: Any, *, node_ip: IPv4Address, mode: Mode, engine_kind: EngineKind,
        node_encryption: bool = False, private_key: PrivateKey | None = None,
    ) -> None:
        self.ipr = ipr
        self.node_ip = node_ip
        self.mode: Mode = mode
        self.engine_kind: EngineKind | None = None if mode == "disabled" else engine_kind
        self.node_encryption = node_encryption
        self.mtus: Mtus = plan_mtus("none" if mode == "disabled" else mode)
        self._private_key = private_key
        self._engine: Engine | None = None
        self._guard: StrictGuard | None = None
        self._guard_cleared = False
        self.pod_cidr: IPv4Network | None = None
        self.router: IPv4Address | None = None

    def start(self, pod_cidr: IPv4Network) -> IPv4Address:
        """Create the node's links for `pod_cidr`, then start the engine; returns the router IP."""
        if conflict := pod_cidr_conflict(self.ipr, self.node_ip, pod_cidr):
            raise PodCIDRConflictError(conflict)
        self.pod_cidr = pod_cidr
        self.router = router_ip(pod_cidr)
        ensure_node_links(self.ipr, NodeLinks(self.node_ip, pod_cidr, self.mtus))
        # Opened once: an engine's life is the agent's boot ID, which its SAs' keys and counters follow.
        if self.mode != "disabled" and self.engine_kind is not None:
            self._engine = open_engine(self.engine_kind, self.mode, mtu=self.mtus.pod,
                                       private_key=self._private_key)
        return self.router

    def apply(
        self, desired: DesiredDatapath, previous: DesiredDatapath | None, guard: StrictGuard | None
    ) -> None:
        """Guard, engine, then links and routes (these only if they differ from `previous`).

        A rotation changes SAs alone, node by node: the netlink passes are most of an agent's work then.
        """
        self._ensure_strict_guard(guard)
        self._apply(desired, previous)

    def _apply(self, desired: DesiredDatapath, previous: DesiredDatapath | None) -> None:
        assert self.router is not None and self.pod_cidr is not None
        engine = self._engine if desired.mode != "disabled" else None
        if engine is not None:
            # Keys and peers first, routes second: a route into the engine never meets a missing SA.
            engine.apply(desired)
        if previous is not None and _routing_of(previous) == _routing_of(desired):
            return
        # Encrypted modes keep VXLAN's peer routes in the ESP table, out of plain traffic's way.
        table = MAIN_TABLE if desired.mode == "disabled" else ESP_TABLE
        reconcile_vxlan_peers(self.ipr, local_router_ip=self.router, peers=desired.vxlan_peers, table=table)
        if engine is not None:
            remove_overlay_routing(self.ipr)
            reconcile_engine_routing(
                self.ipr,
                tun=engine.device,
                local_router_ip=self.router,
                local_pod_cidrs=[self.pod_cidr],
                remotes=desired.remotes,
                mtu=self.mtus.pod,
                blocked=desired.blocked,
            )
            self._apply_node_routing(engine.device, desired)
        else:
            remove_node_routing(self.ipr)
            remove_engine_routing(self.ipr)
            reconcile_overlay_routing(
                self.ipr, local_router_ip=self.router, remotes=desired.remotes, mtu=self.mtus.pod
            )

    def _ensure_strict_guard(self, wanted: StrictGuard | None) -> None:
        """Strict mode's nftables guard in place before any route (again if it was removed by hand)."""
        if wanted is None:
            if not self._guard_cleared:
                self._guard_cleared = True
                # Without strict mode nft need not even be installed.
                with contextlib.suppress(DatapathError):
                    if remove_guard():
                        log.info("strict mode is off: removed the guard an earlier run left")
            return
        if wanted != self._guard or read_drops() is None:
            apply_guard(wanted)
            self._guard = wanted

    def _apply_node_routing(self, tun: str | None, desired: DesiredDatapath) -> None:
        # The kernel IPsec engine has no node encryption, as Cilium's IPsec has none.
        if not self.node_encryption or tun is None:
            remove_node_routing(self.ipr)
            return
        reconcile_node_routing(self.ipr, tun=tun, local_node_ip=self.node_ip,
                               peers=desired.node_peers, blocked=desired.blocked_nodes, mtu=self.mtus.pod)

    def strict_status(self, cidr: IPv4Network | None) -> dict[str, Any] | None:
        """The guard of strict mode on `cidr` as status shows it (None when strict mode is off)."""
        if cidr is None:
            return None
        try:
            drops = read_drops()
        except DatapathError as exc:
            return {"cidr": str(cidr), "guard": False, "unencryptedDrops": None, "error": str(exc)}
        return {"cidr": str(cidr), "guard": drops is not None,
                "unencryptedDrops": None if drops is None else drops.packets}

    @property
    def engine(self) -> Engine | None:
        """The running engine (None before `start` or without encryption)."""
        return self._engine

    def engine_status(self, *, reveal: bool = False) -> dict[str, Any] | None:
        """The engine's status (None without one); SA keys only with `reveal`."""
        return None if self._engine is None else self._engine.status(reveal=reveal)

    def close(self) -> None:
        """Stop the engine, removing its device; the links and fail-closed routes stay (as in Cilium)."""
        if self._engine is not None:
            self._engine.close()
