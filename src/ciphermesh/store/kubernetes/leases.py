"""Registrations on Kubernetes: a node's CiliumNode kept alive by its Lease, an operator's Lease with
leader election on one shared Lease (client-go's way: take it once its holder's renewal has lapsed)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from ciphermesh.store.base import StoreEvent
from ciphermesh.store.errors import ConflictError, StoreError, StoreUnavailableError
from ciphermesh.store.kubernetes.client import CONFLICT, NOT_FOUND, JSONObject, KubeApiError, KubeClient
from ciphermesh.store.kubernetes.objects import (
    CILIUM_NODES,
    COMPONENT,
    LEADER_LEASE,
    NODE_LEASE_NAMESPACE,
    NODES,
    OPERATOR_ANNOTATION,
    OPERATOR_LEASE_PREFIX,
    OPERATOR_NAMESPACE,
    PART_OF,
    cilium_node,
    lease_live,
    leases,
    micro_time,
    node_lease_name,
    node_of,
    now,
)
from ciphermesh.store.model import Node, OperatorRecord
from ciphermesh.store.node_records import carried_over, checked_mutation, wait_for_pod_cidrs
from ciphermesh.store.stream import EventStream

log = logging.getLogger(__name__)

_CAS_ATTEMPTS = 50
_RETRY_DELAY = 0.5


def get_or_none(api: KubeClient, path: str) -> JSONObject | None:
    try:
        return api.request("GET", path)
    except KubeApiError as exc:
        if exc.code == NOT_FOUND:
            return None
        raise


def delete_quietly(api: KubeClient, path: str) -> None:
    """Delete if possible: a refusal or an unreachable server leaves the object to lapse (closing never
    fails on it, as an etcd lease that cannot be revoked expires by itself)."""
    try:
        api.request("DELETE", path)
    except KubeApiError:
        pass
    except StoreUnavailableError as exc:
        log.warning("%s not deleted (it lapses by itself): %s", path, exc)


def renew_lease(
    api: KubeClient,
    namespace: str,
    name: str,
    *,
    holder: str,
    ttl: int,
    labels: dict[str, str],
    annotations: dict[str, str] | None = None,
    lapsed: Callable[[], None] | None = None,
) -> bool:
    """Renew (or create) Lease `name` as `holder`; True if it had lapsed, been taken or was missing,
    in which case `lapsed` is called first, before anyone can see it live again."""
    path = f"{leases(namespace)}/{name}"
    stamp = micro_time(now())
    current = get_or_none(api, path)
    spec = {"holderIdentity": holder, "leaseDurationSeconds": ttl, "renewTime": stamp}
    if current is None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "annotations": annotations or {},
            },
            "spec": {**spec, "acquireTime": stamp},
        }
        if lapsed is not None:
            lapsed()
        api.request("POST", leases(namespace), body)
        return True
    previous = current.get("spec") or {}
    taken = previous.get("holderIdentity") != holder
    gone = taken or not lease_live(current)
    if gone and lapsed is not None:
        lapsed()
    if taken:
        # A new holder, as client-go's leader election records it.
        spec |= {"acquireTime": stamp, "leaseTransitions": int(previous.get("leaseTransitions") or 0) + 1}
    current["spec"] = {**previous, **spec}
    if annotations is not None:
        current["metadata"]["annotations"] = annotations
    api.request("PUT", path, current)  # carries its resourceVersion: a racing writer gets 409
    return gone


class _Renewer:
    """Calls `tick` every `interval` seconds from a thread; a failure is kept in `last_error`."""

    def __init__(self, tick: Callable[[], None], interval: float, what: str) -> None:
        self._tick = tick
        self._interval = interval
        self._what = what
        self._stop = threading.Event()
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"lease {what}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        delay = self._interval
        while not self._stop.wait(delay):
            try:
                self._tick()
                self.last_error, delay = None, self._interval
            except StoreError as exc:
                if self.last_error is None:
                    log.warning("%s: cannot renew its Lease: %s", self._what, exc)
                self.last_error, delay = str(exc), min(_RETRY_DELAY, self._interval)

    def stop(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)


class KubeNodeRegistration:
    """A CiliumNode kept alive by the Lease `kube-node-lease/ciphermesh-<node>` (see `NodeRegistration`);
    a CiliumNode deleted behind its back, or a Lease that lapsed, is published again on the next renewal."""

    def __init__(
        self, api: KubeClient, node: Node, ttl: int, watch: Callable[[str], EventStream[StoreEvent[Node]]]
    ) -> None:
        self._api = api
        self._node = node
        self._ttl = ttl
        self._watch = watch
        self._path = f"{CILIUM_NODES}/{node.name}"
        self._lease = node_lease_name(node.name)
        self._republished = 0
        self._owned = False  # whether the CiliumNode names its v1 Node as its owner yet
        self._lock = threading.RLock()
        with self._lock:
            # The Lease first, so the CiliumNode is live the moment it appears; renewed again after, so
            # a slow first write does not leave the node registered but already lapsed.
            self._renew()
            self._publish()
            self._renew()
        self._renewer = _Renewer(self._tick, max(ttl / 3, 0.5), f"node {node.name}")

    @property
    def name(self) -> str:
        return self._node.name

    @property
    def node(self) -> Node:
        return self._node

    @property
    def republished(self) -> int:
        return self._republished

    @property
    def last_error(self) -> str | None:
        return self._renewer.last_error

    def _renew(self, lapsed: Callable[[], None] | None = None) -> bool:
        labels = {PART_OF: "ciphermesh", COMPONENT: "agent"}
        return renew_lease(
            self._api,
            NODE_LEASE_NAMESPACE,
            self._lease,
            holder=self.name,
            ttl=self._ttl,
            labels=labels,
            lapsed=lapsed,
        )

    def _count_republished(self) -> None:
        self._republished += 1
        log.warning("node %s: its record had lapsed or was deleted; publishing it again", self.name)

    def _publish(self) -> None:
        """Write our CiliumNode over what the cluster already has for this node (`carried_over`)."""
        for _ in range(_CAS_ATTEMPTS):
            stored = get_or_none(self._api, self._path)
            node = self._node
            if stored is not None:
                with contextlib.suppress(StoreError):
                    node = carried_over(node, node_of(stored))
            body = cilium_node(node, stored)
            owner = self._owner_reference()
            if owner is not None:
                body["metadata"]["ownerReferences"] = [owner]
            try:
                if stored is None:
                    self._api.request("POST", CILIUM_NODES, body)
                else:
                    self._api.request("PUT", self._path, body)
            except KubeApiError as exc:
                if exc.code == CONFLICT:
                    continue
                raise
            self._node = node
            self._owned = owner is not None
            return
        raise ConflictError(f"node {self.name} kept changing while it was being registered")

    def _owner_reference(self) -> JSONObject | None:
        """A reference to this node's v1 Node, if it exists: as Cilium's, the CiliumNode goes with its
        Node (the garbage collector, or the operator's where none runs, deletes it)."""
        owner = get_or_none(self._api, f"{NODES}/{self.name}")
        if owner is None:
            return None
        return {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": owner["metadata"]["uid"]}

    def _own(self) -> None:
        """Add the owner reference to a CiliumNode written before its Node was registered; the rest of
        the object (the operator's pod CIDRs and errors) is left as it is."""
        owner = self._owner_reference()
        stored = get_or_none(self._api, self._path) if owner is not None else None
        if stored is None:
            return
        stored["metadata"]["ownerReferences"] = [owner]
        try:
            self._api.request("PUT", self._path, stored)  # a 409 is retried on the next renewal
        except KubeApiError as exc:
            if exc.code != CONFLICT:
                raise
            return
        self._owned = True

    def _tick(self) -> None:
        with self._lock:
            # Counted before the record is visible again, so that whoever sees it back sees the count.
            if self._renew(self._count_republished):
                self._publish()
            elif get_or_none(self._api, self._path) is None:
                self._count_republished()
                self._publish()
            elif not self._owned:
                self._own()

    def update(self, mutate: Callable[[Node], Node]) -> Node:
        with self._lock:
            for _ in range(_CAS_ATTEMPTS):
                stored = get_or_none(self._api, self._path)
                current = None
                if stored is not None:
                    with contextlib.suppress(StoreError):
                        current = node_of(stored)
                new = checked_mutation(mutate, current or self._node)
                try:
                    if stored is None:
                        self._node = new
                        self._publish()
                        self._republished += 1
                        return self._node
                    self._api.request("PUT", self._path, cilium_node(new, stored))
                except KubeApiError as exc:
                    if exc.code == CONFLICT:
                        continue
                    raise
                self._node = new
                return new
        raise ConflictError(f"node {self.name} kept changing; gave up after {_CAS_ATTEMPTS} attempts")

    def wait_for_pod_cidrs(self, timeout: float, stop: threading.Event | None = None) -> tuple[str, ...]:
        stored = wait_for_pod_cidrs(self.name, lambda: self._watch(self.name), timeout, stop)
        with self._lock:
            self._node = replace(self._node, pod_cidrs=stored.pod_cidrs)
        return stored.pod_cidrs

    def close(self, *, revoke: bool = True) -> None:
        self._renewer.stop()
        if revoke:
            with self._lock:
                delete_quietly(self._api, self._path)
                delete_quietly(self._api, f"{leases(NODE_LEASE_NAMESPACE)}/{self._lease}")


class KubeOperatorRegistration:
    """An operator's Lease carrying its record, campaigning for the leader Lease; it stops leading a
    renewal interval before its hold could have lapsed."""

    def __init__(self, api: KubeClient, record: OperatorRecord, ttl: int) -> None:
        self._api = api
        self._record = record
        self._ttl = ttl
        self._interval = max(ttl / 3, 0.5)
        self._leader_path = f"{leases(OPERATOR_NAMESPACE)}/{LEADER_LEASE}"
        self._leads_until = 0.0
        self._tick()
        self._renewer = _Renewer(self._tick, self._interval, f"operator {record.id}")

    @property
    def last_error(self) -> str | None:
        return self._renewer.last_error

    @property
    def leading(self) -> bool:
        return time.monotonic() < self._leads_until - self._interval

    def _tick(self) -> None:
        labels = {PART_OF: "ciphermesh", COMPONENT: "operator"}
        annotations = {OPERATOR_ANNOTATION: self._record.to_json()}
        renew_lease(
            self._api,
            OPERATOR_NAMESPACE,
            OPERATOR_LEASE_PREFIX + self._record.id,
            holder=self._record.id,
            ttl=self._ttl,
            labels=labels,
            annotations=annotations,
        )
        self._campaign()

    def _campaign(self) -> None:
        sent = time.monotonic()
        leader = get_or_none(self._api, self._leader_path)
        holder = (leader.get("spec") or {}).get("holderIdentity") if leader is not None else None
        if leader is not None and holder not in (None, "", self._record.id) and lease_live(leader):
            self._leads_until = 0.0
            return
        try:
            renew_lease(
                self._api,
                OPERATOR_NAMESPACE,
                LEADER_LEASE,
                holder=self._record.id,
                ttl=self._ttl,
                labels={PART_OF: "ciphermesh", COMPONENT: "operator-leader"},
            )
        except KubeApiError as exc:
            if exc.code != CONFLICT:
                raise
            self._leads_until = 0.0  # another operator took it first
            return
        self._leads_until = sent + self._ttl

    def close(self, *, revoke: bool = True) -> None:
        self._renewer.stop()
        self._leads_until = 0.0
        if not revoke:
            return
        delete_quietly(self._api, f"{leases(OPERATOR_NAMESPACE)}/{OPERATOR_LEASE_PREFIX}{self._record.id}")
        leader = get_or_none(self._api, self._leader_path)
        if leader is not None and (leader.get("spec") or {}).get("holderIdentity") == self._record.id:
            # Release as client-go does, so the next operator need not wait out the duration.
            precondition = {"preconditions": {"resourceVersion": leader["metadata"]["resourceVersion"]}}
            with contextlib.suppress(KubeApiError):
                self._api.request("DELETE", self._leader_path, precondition)


def operator_of(lease: JSONObject) -> OperatorRecord | None:
    text = ((lease.get("metadata") or {}).get("annotations") or {}).get(OPERATOR_ANNOTATION)
    try:
        return OperatorRecord.from_json(text) if isinstance(text, str) else None
    except (StoreError, ValueError, json.JSONDecodeError):
        return None
