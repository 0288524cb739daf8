"""What every backend does alike with node records: carry a re-registration over, check a mutation, wait
for the pod CIDRs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

from ciphermesh.store.base import StoreEvent
from ciphermesh.store.errors import PodCIDRTimeoutError, StoreError
from ciphermesh.store.model import Node
from ciphermesh.store.stream import EventStream

_POLL = 0.5


def carried_over(node: Node, stored: Node) -> Node:
    """A registration over the record its node already has (an agent restarted before its lease ran
    out): what `node` leaves unset keeps the stored value until the agent updates it. Peers then keep the
    node, its router IP and key while it starts again; a restart must not look like the node leaving (a
    CiliumNode outlives its agent the same way). The pod CIDRs are the operator's: they always stay."""
    return replace(
        node,
        pod_cidrs=node.pod_cidrs or stored.pod_cidrs,
        router_ip=node.router_ip or stored.router_ip,
        health_endpoint=node.health_endpoint or stored.health_endpoint,
        key_id=node.key_id if node.key_id is not None else stored.key_id,
        encryption=node.encryption or stored.encryption,
    )


def checked_mutation(mutate: Callable[[Node], Node], node: Node) -> Node:
    """`mutate(node)`, refused if it is not a Node of the same name."""
    new = mutate(node)
    if not isinstance(new, Node):
        raise StoreError("a node update must return a Node")
    if new.name != node.name:
        raise StoreError(f"a node update cannot rename {node.name} to {new.name}")
    return new


def wait_for_pod_cidrs(
    name: str,
    watch: Callable[[], EventStream[StoreEvent[Node]]],
    timeout: float,
    stop: threading.Event | None,
) -> Node:
    """The node's record once it has pod CIDRs; `PodCIDRTimeoutError` with the operator's reason if not."""
    deadline = time.monotonic() + timeout
    last: Node | None = None
    with watch() as events:
        while (left := deadline - time.monotonic()) > 0 and not (stop is not None and stop.is_set()):
            event = events.get(timeout=min(left, _POLL))
            if event is None or event.kind != "put" or event.value is None:
                continue
            last = event.value
            if last.pod_cidrs:
                return last
    why = last.ipam_error if last is not None else None
    why = why or "no IPAM error recorded; is the operator running?"
    if stop is not None and stop.is_set():
        raise PodCIDRTimeoutError(f"stopped while node {name} waited for a pod CIDR: {why}")
    raise PodCIDRTimeoutError(f"node {name} has no pod CIDR after {timeout:g} s: {why}")
