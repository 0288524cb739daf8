"""The operator's IPAM loop: give every node a pod CIDR from the cluster pool, in the node's own
record, and write why into a node's record when it cannot have one.

Level-triggered: each pass reads every node afresh; the CIDRs in use are those the records hold, live
or lapsed (a kept record comes back with its CIDRs: `Store.held_pod_cidrs`), so a node whose record is
gone has released its CIDR. Each write is a compare-and-swap on one node record, which
keeps a node from getting two CIDRs; that no CIDR goes to two nodes needs one allocator at a time, so
several operators may run but only the leader allocates (as Cilium's operator, by leader election).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from ciphermesh.operator.ipam import ClusterPool
from ciphermesh.operator.node_gc import start_node_gc
from ciphermesh.store.base import DEFAULT_NODE_TTL, OperatorRegistration, StoreEvent, Versioned
from ciphermesh.store.errors import StoreError
from ciphermesh.store.model import Node, OperatorRecord
from ciphermesh.store.store import Store
from ciphermesh.store.stream import EventStream

log = logging.getLogger(__name__)

DEFAULT_RESYNC_INTERVAL = 30.0
_POLL = 0.5
_COALESCE = 0.05


@dataclass(frozen=True)
class OperatorConfig:
    """The operator's settings as plain values (Helm names in the comments)."""

    cluster_pool_ipv4_cidrs: tuple[str, ...] = ("10.0.0.0/8",)  # ipam.operator.clusterPoolIPv4PodCIDRList
    cluster_pool_ipv4_mask_size: int = 24  # ipam.operator.clusterPoolIPv4MaskSize
    operator_id: str = field(default_factory=lambda: f"operator-{os.getpid()}")
    lease_ttl: int = DEFAULT_NODE_TTL
    resync_interval: float = DEFAULT_RESYNC_INTERVAL


@dataclass
class PassReport:
    """What one reconcile pass did; `conflicts` counts writes that lost a race (run again)."""

    assigned: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    conflicts: int = 0


def _natural(name: str) -> tuple[object, ...]:
    """node-2 before node-10, so that nodes are served in the order people number them."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _ipv4_cidr(cidrs: tuple[str, ...]) -> IPv4Network | None:
    for cidr in cidrs:
        network = ipaddress.ip_network(cidr)
        if isinstance(network, IPv4Network):
            return network
    return None


class IPAMController:
    """One reconcile pass at a time over the store's nodes; the leading operator's alone."""

    def __init__(self, store: Store, pool: ClusterPool) -> None:
        self._store = store
        self._pool = pool

    def reconcile(self) -> PassReport:
        report = PassReport()
        nodes = sorted(self._store.list_nodes(), key=lambda n: _natural(n.value.name))
        # Read after the live nodes, so that a record lapsing in between still counts as holding its CIDR.
        held = {name: c for name, cidrs in self._store.held_pod_cidrs().items() if (c := _ipv4_cidr(cidrs))}
        for node in nodes:
            if (cidr := _ipv4_cidr(node.value.pod_cidrs)) is not None:
                held.setdefault(node.value.name, cidr)
        owners: dict[IPv4Network, str] = {}
        for name in sorted(held, key=_natural):
            owners.setdefault(held[name], name)
        taken = set(owners)
        for node in nodes:
            cidr = _ipv4_cidr(node.value.pod_cidrs)
            if cidr is not None:
                # Absent if the record changed between the two reads: the write then loses its CAS.
                self._confirm(node, cidr, owners.get(cidr, node.value.name), report)
            else:
                self._assign(node, taken, report)
        return report

    def _confirm(self, node: Versioned[Node], cidr: IPv4Network, owner: str, report: PassReport) -> None:
        """A node that already names its CIDR: clear its error, or say why it cannot have it."""
        name = node.value.name
        if owner != name:
            # Two records name one CIDR (a record restored behind the operator's back): the first in
            # node order keeps it, the others are told.
            self._set_error(node, f"IPAM: podCIDR {cidr} of {name} is already allocated to {owner}", report)
        elif self._pool.entry_of(cidr) is None and self._pool.overlaps(cidr):
            self._set_error(
                node,
                f"IPAM: podCIDR {cidr} of {name} overlaps pool {self._pool.describe()} "
                f"but is not one of its /{self._pool.mask_size} blocks",
                report,
            )
        else:
            self._set_error(node, None, report)

    def _assign(self, node: Versioned[Node], taken: set[IPv4Network], report: PassReport) -> None:
        name = node.value.name
        free = self._pool.first_free(taken)
        if free is None:
            self._set_error(node, self._pool.exhausted_message(name), report)
            return
        block, _ = free
        if self._write(report, name, self._store.assign_pod_cidr(node, str(block)) is not None):
            taken.add(block)
            report.assigned[name] = str(block)
            log.info("IPAM: assigned %s to %s", block, name)

    def _set_error(self, node: Versioned[Node], message: str | None, report: PassReport) -> None:
        if node.value.ipam_error == message:
            return
        if self._write(report, node.value.name, self._store.set_ipam_error(node, message)) and message:
            report.errors[node.value.name] = message
            log.warning("%s", message)

    @staticmethod
    def _write(report: PassReport, name: str, succeeded: bool) -> bool:
        if not succeeded:
            report.conflicts += 1
            log.debug("IPAM: %s changed under this pass; will run again", name)
        return succeeded


def run_operator(store: Store, config: OperatorConfig, stop_event: threading.Event) -> None:
    """Run the IPAM controller until `stop_event` is set; a bad pool raises `IPAMConfigError` at once.

    Survives the store going away and coming back: it keeps retrying and re-registers itself.
    """
    pool = ClusterPool.parse(config.cluster_pool_ipv4_cidrs, config.cluster_pool_ipv4_mask_size)
    record = OperatorRecord(
        config.operator_id, os.getpid(), tuple(str(c) for c in pool.cidrs), pool.mask_size
    )
    registration = _register(store, record, config.lease_ttl, stop_event)
    if registration is None:
        return
    controller = IPAMController(store, pool)
    # On Kubernetes the leader also deletes the CiliumNodes of Nodes that are gone (see node_gc).
    gc_stop = threading.Event()
    gc = start_node_gc(store, lambda: registration.leading, config.lease_ttl, gc_stop)
    log.info("operator %s: pool %s, /%d per node", config.operator_id, pool.describe(), pool.mask_size)
    events: EventStream[StoreEvent[Node]] | None = None
    try:
        dirty = True
        next_resync = 0.0
        while not stop_event.is_set():
            if not registration.leading:
                # Another operator allocates; this one stands by and looks again.
                if events is not None:
                    log.info("operator %s: no longer leading", config.operator_id)
                    events.close()
                    events = None
                stop_event.wait(_POLL)
                continue
            if events is None:
                events, dirty = store.watch_nodes(), True
            if dirty or time.monotonic() >= next_resync:
                dirty = _pass(controller, stop_event)
                next_resync = time.monotonic() + config.resync_interval
            if dirty:
                # A node changed under the pass (its agent wrote): give it a moment, then look again.
                stop_event.wait(random.uniform(0.01, 0.1))
                continue
            try:
                dirty = _changed(events)
            except StoreError as exc:
                log.warning("operator: node watch failed (%s); watching again", exc)
                events.close()
                events, dirty = store.watch_nodes(), True
    finally:
        gc_stop.set()
        if gc is not None:
            gc.join(timeout=5)
        if events is not None:
            events.close()
        registration.close()


def _changed(events: EventStream[StoreEvent[Node]]) -> bool:
    """Wait for a change; a burst of changes (up to `_POLL` seconds of it) counts once."""
    if events.get(timeout=_POLL) is None:
        return False
    until = time.monotonic() + _POLL
    while time.monotonic() < until and events.get(timeout=_COALESCE) is not None:
        pass
    return True


def _pass(controller: IPAMController, stop_event: threading.Event) -> bool:
    """Run one pass; True if it must run again soon."""
    try:
        return controller.reconcile().conflicts > 0
    except StoreError as exc:
        log.warning("operator: %s", exc)
        stop_event.wait(_POLL)
        return True


def _register(
    store: Store, record: OperatorRecord, ttl: int, stop_event: threading.Event
) -> OperatorRegistration | None:
    while not stop_event.is_set():
        try:
            return store.register_operator(record, ttl=ttl)
        except StoreError as exc:
            log.warning("operator: cannot register yet: %s", exc)
            stop_event.wait(_POLL)
    return None
