"""Registrations on etcd: a node's record and an operator's record (with its leadership), each under
a lease kept alive by `LeaseKeeper`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

from ciphermesh.store.base import StoreEvent
from ciphermesh.store.errors import ConflictError
from ciphermesh.store.etcd.client import EtcdClient
from ciphermesh.store.etcd.leases import LeaseKeeper
from ciphermesh.store.etcd.messages import Get, LeaseNotFoundError, Put, key_missing, mod_revision_is
from ciphermesh.store.etcd.records import KeyLayout, parse_kv, store_errors
from ciphermesh.store.model import Node, OperatorRecord
from ciphermesh.store.node_records import carried_over, checked_mutation, wait_for_pod_cidrs
from ciphermesh.store.stream import EventStream

_CAS_ATTEMPTS = 50


class EtcdNodeRegistration:
    """A node record under a kept-alive lease (see `NodeRegistration`); a record deleted behind its
    back is published again on the next keepalive, as one whose lease was lost is."""

    def __init__(
        self,
        client: EtcdClient,
        keys: KeyLayout,
        node: Node,
        ttl: int,
        watch: Callable[[str], EventStream[StoreEvent[Node]]],
    ) -> None:
        self._client = client
        self._key = keys.node(node.name)
        self._node = node
        self._watch = watch
        self._recreated = 0
        self._lock = threading.RLock()
        self._keeper = LeaseKeeper(
            client, ttl, self._publish, self._lock, f"node {node.name}", check=self._check
        )

    @property
    def name(self) -> str:
        return self._node.name

    @property
    def node(self) -> Node:
        return self._node

    @property
    def lease_id(self) -> int:
        return self._keeper.lease_id

    @property
    def republished(self) -> int:
        return self._keeper.renewals + self._recreated

    @property
    def last_error(self) -> str | None:
        return self._keeper.last_error

    def _publish(self, lease: int) -> None:
        """Write our record under `lease`, over what the store already has for this node (`carried_over`)."""
        for _ in range(_CAS_ATTEMPTS):
            kv = self._client.get(self._key)
            node = self._node
            stored = parse_kv(kv, Node.from_json) if kv is not None else None
            if stored is not None:
                node = carried_over(node, stored)
            compare = key_missing(self._key) if kv is None else mod_revision_is(self._key, kv.mod_revision)
            if self._client.txn([compare], [Put(self._key, node.to_json().encode(), lease)]).succeeded:
                self._node = node
                return
        raise ConflictError(f"node {self.name} kept changing while it was being registered")

    def _check(self, lease: int) -> None:
        if self._client.get(self._key) is None:
            self._publish(lease)
            self._recreated += 1

    def update(self, mutate: Callable[[Node], Node]) -> Node:
        with store_errors(), self._lock:
            for _ in range(_CAS_ATTEMPTS):
                kv = self._client.get(self._key)
                current = parse_kv(kv, Node.from_json) if kv is not None else None
                new = checked_mutation(mutate, current or self._node)
                if kv is None:
                    self._node = new
                    self._keeper.renew()
                    return self._node
                compare = mod_revision_is(self._key, kv.mod_revision)
                try:
                    result = self._client.txn(
                        [compare], [Put(self._key, new.to_json().encode(), self.lease_id)]
                    )
                except LeaseNotFoundError:
                    self._node = new
                    self._keeper.renew()
                    return self._node
                if result.succeeded:
                    self._node = new
                    return new
        raise ConflictError(f"node {self.name} kept changing; gave up after {_CAS_ATTEMPTS} attempts")

    def wait_for_pod_cidrs(self, timeout: float, stop: threading.Event | None = None) -> tuple[str, ...]:
        with store_errors():
            stored = wait_for_pod_cidrs(self.name, lambda: self._watch(self.name), timeout, stop)
        with self._lock:
            self._node = replace(self._node, pod_cidrs=stored.pod_cidrs)
        return stored.pod_cidrs

    def close(self, *, revoke: bool = True) -> None:
        self._keeper.close(revoke=revoke)


class EtcdOperatorRegistration:
    """An operator's record under a kept-alive lease, campaigning for the leader key under the same
    lease; it stops leading a keepalive interval before the lease could have expired."""

    def __init__(self, client: EtcdClient, keys: KeyLayout, record: OperatorRecord, ttl: int) -> None:
        self._client = client
        self._key = keys.operator(record.id)
        self._leader_key = keys.leader
        self._record = record
        self._leader_lease: int | None = None
        self._keeper = LeaseKeeper(
            client, ttl, self._publish, threading.RLock(), f"operator {record.id}", check=self._campaign
        )

    @property
    def last_error(self) -> str | None:
        return self._keeper.last_error

    @property
    def leading(self) -> bool:
        keeper = self._keeper
        fresh = time.monotonic() < keeper.valid_until - keeper.interval
        return fresh and self._leader_lease == keeper.lease_id

    def _publish(self, lease: int) -> None:
        self._client.put(self._key, self._record.to_json().encode(), lease=lease)
        self._campaign(lease)

    def _campaign(self, lease: int) -> None:
        """Take the leader key if no one holds it; leading iff it is held under our lease."""
        value = self._record.id.encode()
        result = self._client.txn(
            [key_missing(self._leader_key)], [Put(self._leader_key, value, lease)], [Get(self._leader_key)]
        )
        held = result.succeeded or any(kv.lease == lease for kvs in result.ranges for kv in kvs)
        self._leader_lease = lease if held else None

    def close(self, *, revoke: bool = True) -> None:
        self._keeper.close(revoke=revoke)
        self._leader_lease = None
