"""Delete the CiliumNodes whose v1 Node is gone, as Cilium's operator does: no kube-controller-manager
(whose garbage collector would follow the ownerReference) runs in the lab, and a node whose agent died
without cleaning up would keep its CiliumNode (and, once it comes back, its pod CIDR) forever.

Kubernetes only, as a controller the operator starts when its store is Kubernetes rather than a `Backend`
method: a v1 Node is no record of the store contract, and on etcd there is nothing to collect (a node's
lease takes its record with it). Every node on Kubernetes has a Node (a kubelet registers it, the lab's
too), so a CiliumNode without one is garbage; but only once it has been so for `grace` seconds (about a
lease duration), so that a node still registering is not raced, and only the leading operator deletes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ciphermesh.store.errors import StoreError
from ciphermesh.store.kubernetes.backend import KubernetesBackend
from ciphermesh.store.kubernetes.client import CONFLICT, NOT_FOUND, KubeApiError, KubeClient
from ciphermesh.store.kubernetes.leases import get_or_none
from ciphermesh.store.kubernetes.objects import CILIUM_NODES, NODES, name_of
from ciphermesh.store.store import Store

log = logging.getLogger(__name__)

MAX_INTERVAL = 5.0


class NodeGarbageCollector:
    """One pass at a time: a CiliumNode seen without its Node on passes `grace` seconds apart goes."""

    def __init__(self, api: KubeClient, grace: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._api = api
        self._grace = grace
        self._clock = clock
        self._orphans: dict[str, tuple[str, float]] = {}  # name -> (uid, first seen without its Node)

    def collect(self) -> list[str]:
        """List Nodes and CiliumNodes, delete the CiliumNodes orphaned for `grace`; their names."""
        nodes = {name_of(n) for n in self._api.request("GET", NODES).get("items") or []}
        cilium_nodes = self._api.request("GET", CILIUM_NODES).get("items") or []
        now = self._clock()
        orphans: dict[str, tuple[str, float]] = {}
        deleted = []
        for obj in cilium_nodes:
            name, uid = name_of(obj), str(obj["metadata"]["uid"])
            if name in nodes:
                continue
            seen_uid, since = self._orphans.get(name, (uid, now))
            if seen_uid != uid:  # deleted and created again since: a new object, a new grace period
                since = now
            if now - since < self._grace or not self._delete(name, uid):
                orphans[name] = (uid, since)
            else:
                deleted.append(name)
        self._orphans = orphans
        return deleted

    def forget(self) -> None:
        """Start over (this operator stopped leading: the next leader's grace counts from its own look)."""
        self._orphans = {}

    def _delete(self, name: str, uid: str) -> bool:
        # The Node may have registered since the listing; the uid precondition spares a CiliumNode that
        # was deleted and written again meanwhile.
        if get_or_none(self._api, f"{NODES}/{name}") is not None:
            return False
        try:
            self._api.request("DELETE", f"{CILIUM_NODES}/{name}", {"preconditions": {"uid": uid}})
        except KubeApiError as exc:
            if exc.code in (CONFLICT, NOT_FOUND):
                return False
            raise
        log.info("node GC: deleted CiliumNode %s, whose Node is gone", name)
        return True


def start_node_gc(
    store: Store, leading: Callable[[], bool], grace: float, stop: threading.Event
) -> threading.Thread | None:
    """Run the collector in a thread until `stop`, passes every `grace`/2 s (at most 5) while `leading`;
    None if the store is not on Kubernetes."""
    if not isinstance(store.backend, KubernetesBackend):
        return None
    collector = NodeGarbageCollector(store.backend.api, grace)
    interval = min(max(grace / 2, 0.5), MAX_INTERVAL)

    def run() -> None:
        failing = False
        while not stop.wait(interval):
            if not leading():
                collector.forget()
                continue
            try:
                collector.collect()
                failing = False
            except StoreError as exc:
                if not failing:
                    log.warning("node GC: %s", exc)
                failing = True

    thread = threading.Thread(target=run, name="node-gc", daemon=True)
    thread.start()
    return thread
