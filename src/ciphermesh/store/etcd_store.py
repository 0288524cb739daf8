"""The `Store` on etcd.

Key layout (`<cluster>` is the lab name or the cluster's name, a DNS-1123 name):

    /ciphermesh/<cluster>/nodes/<node>                   Node JSON, under the agent's lease
    /ciphermesh/<cluster>/ipam/v4/<a.b.c.d>-<prefixlen>  IPAMAllocation JSON, no lease (the operator
                                                         releases it once the node is gone)
    /ciphermesh/<cluster>/secrets/<namespace>/<name>     the key secret's `keys` text, verbatim
    /ciphermesh/<cluster>/operators/<id>                 OperatorRecord JSON, under the operator's lease

A node's pod CIDR is written together with its allocation in one transaction that compares both
records' revisions, so no CIDR ever belongs to two nodes and no node ever gets two.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Generic, TypeVar

from ciphermesh.keys import parse_secret
from ciphermesh.store.base import DEFAULT_NODE_TTL, StoreEvent, Versioned
from ciphermesh.store.errors import (
    ConflictError,
    InvalidSecretError,
    NodeNotFoundError,
    PodCIDRTimeoutError,
    RecordError,
    StoreError,
    StoreUnavailableError,
)
from ciphermesh.store.etcd_client import (
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    EtcdUnavailableError,
    KeyValue,
    LeaseNotFoundError,
    Put,
    WatchCompactedError,
    WatchEvent,
    key_missing,
    mod_revision_is,
    prefix_end,
)
from ciphermesh.store.model import (
    DEFAULT_SECRET_NAME,
    SECRET_NAMESPACE,
    IPAMAllocation,
    KeySecret,
    Node,
    OperatorRecord,
    check_name,
)
from ciphermesh.store.stream import EventStream, StreamSink

T = TypeVar("T")

log = logging.getLogger(__name__)

ROOT = "/ciphermesh"
_RETRY_DELAY = 0.5
_CAS_ATTEMPTS = 50


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """etcd's typed errors become the store's, with the same one-line message."""
    try:
        yield
    except EtcdUnavailableError as exc:
        raise StoreUnavailableError(str(exc)) from None
    except EtcdError as exc:
        raise StoreError(str(exc)) from None


class EtcdStore:
    """One cluster's records in etcd (see the module docstring for the layout)."""

    def __init__(self, client: EtcdClient, cluster: str) -> None:
        self.cluster = check_name("cluster name", cluster)
        self.client = client
        self._root = f"{ROOT}/{cluster}/".encode()

    @classmethod
    def connect(cls, endpoint: str, cluster: str, *, timeout: float = 5.0) -> EtcdStore:
        with _store_errors():
            return cls(EtcdClient(endpoint, timeout=timeout), cluster)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def node_key(self, name: str) -> bytes:
        return self._root + b"nodes/" + check_name("node name", name).encode()

    def allocation_key(self, cidr: str) -> bytes:
        family = "v6" if ":" in cidr else "v4"
        return self._root + f"ipam/{family}/{cidr.replace('/', '-')}".encode()

    def secret_key(self, name: str, namespace: str) -> bytes:
        return (
            self._root + f"secrets/{check_name('namespace', namespace)}/{check_name('secret', name)}".encode()
        )

    def operator_key(self, operator_id: str) -> bytes:
        return self._root + b"operators/" + check_name("operator id", operator_id).encode()

    # nodes

    def register_node(self, node: Node, *, ttl: int = DEFAULT_NODE_TTL) -> EtcdNodeRegistration:
        with _store_errors():
            return EtcdNodeRegistration(self, node, ttl)

    def get_node(self, name: str) -> Versioned[Node] | None:
        with _store_errors():
            kv = self.client.get(self.node_key(name))
        return _parse(kv, Node.from_json) if kv is not None else None

    def list_nodes(self) -> list[Versioned[Node]]:
        with _store_errors():
            kvs = self.client.get_prefix(self._root + b"nodes/").kvs
        return _parse_all(kvs, Node.from_json)

    def update_node(self, name: str, mutate: Callable[[Node], Node]) -> Versioned[Node]:
        key = self.node_key(name)
        with _store_errors():
            for _ in range(_CAS_ATTEMPTS):
                kv = self.client.get(key)
                if kv is None:
                    raise NodeNotFoundError(f"node {name} is not registered")
                current = _parse(kv, Node.from_json)
                if current is None:
                    raise StoreError(f"the record of node {name} is not valid; see the log")
                new = _checked_mutation(mutate, current.value)
                result = self.client.txn(
                    [mod_revision_is(key, kv.mod_revision)], [Put(key, new.to_json().encode(), kv.lease)]
                )
                if result.succeeded:
                    return Versioned(new, result.revision)
        raise ConflictError(f"node {name} kept changing; gave up after {_CAS_ATTEMPTS} attempts")

    def watch_nodes(self) -> EventStream[StoreEvent[Node]]:
        prefix = self._root + b"nodes/"
        return self._watch(prefix, prefix_end(prefix), lambda kv: Node.from_json(kv.value))

    def watch_node(self, name: str) -> EventStream[StoreEvent[Node]]:
        return self._watch(self.node_key(name), None, lambda kv: Node.from_json(kv.value))

    # the key secret

    def get_key_secret(
        self, *, name: str = DEFAULT_SECRET_NAME, namespace: str = SECRET_NAMESPACE
    ) -> Versioned[KeySecret] | None:
        with _store_errors():
            kv = self.client.get(self.secret_key(name, namespace))
        return _parse(kv, _secret_parser(name, namespace)) if kv is not None else None

    def put_key_secret(
        self,
        keys: str,
        *,
        name: str = DEFAULT_SECRET_NAME,
        namespace: str = SECRET_NAMESPACE,
        expect_revision: int | None = None,
    ) -> Versioned[KeySecret]:
        try:
            secret = KeySecret(keys=keys, name=name, namespace=namespace)
            parse_secret(keys)
        except ValueError as exc:
            raise InvalidSecretError(f"secret {namespace}/{name} not stored: {exc}") from None
        key = self.secret_key(name, namespace)
        compare: list[Compare] = []
        if expect_revision is not None:
            compare.append(
                key_missing(key) if expect_revision == 0 else mod_revision_is(key, expect_revision)
            )
        with _store_errors():
            result = self.client.txn(compare, [Put(key, keys.encode())])
        if not result.succeeded:
            raise ConflictError(
                f"secret {namespace}/{name} changed since revision {expect_revision}; read it again"
            )
        return Versioned(secret, result.revision)

    def watch_key_secret(
        self, *, name: str = DEFAULT_SECRET_NAME, namespace: str = SECRET_NAMESPACE
    ) -> EventStream[StoreEvent[KeySecret]]:
        parse = _secret_parser(name, namespace)
        return self._watch(self.secret_key(name, namespace), None, lambda kv: parse(kv.value))

    # IPAM

    def list_allocations(self) -> list[Versioned[IPAMAllocation]]:
        with _store_errors():
            kvs = self.client.get_prefix(self._root + b"ipam/").kvs
        return _parse_all(kvs, IPAMAllocation.from_json)

    def claim_pod_cidr(self, node: Versioned[Node], allocation: IPAMAllocation) -> bool:
        akey = self.allocation_key(allocation.cidr)
        return self._write_node_cidr(
            node, allocation, [key_missing(akey)], [Put(akey, allocation.to_json().encode())]
        )

    def bind_pod_cidr(self, node: Versioned[Node], allocation: Versioned[IPAMAllocation]) -> bool:
        akey = self.allocation_key(allocation.value.cidr)
        return self._write_node_cidr(node, allocation.value, [mod_revision_is(akey, allocation.revision)], [])

    def release_pod_cidr(self, allocation: Versioned[IPAMAllocation], node: Versioned[Node] | None) -> bool:
        akey = self.allocation_key(allocation.value.cidr)
        nkey = self.node_key(allocation.value.node)
        node_compare = key_missing(nkey) if node is None else mod_revision_is(nkey, node.revision)
        with _store_errors():
            result = self.client.txn(
                [mod_revision_is(akey, allocation.revision), node_compare], [Delete(akey)]
            )
        return result.succeeded

    def set_ipam_error(self, node: Versioned[Node], message: str | None) -> bool:
        new = node.value.with_ipam_error(message)
        return new == node.value or self._put_node_if_unchanged(node, new, [], [])

    def _write_node_cidr(
        self, node: Versioned[Node], allocation: IPAMAllocation, compare: list[Compare], ops: list[Put]
    ) -> bool:
        if allocation.node != node.value.name:
            raise StoreError(f"allocation {allocation.cidr} is for {allocation.node}, not {node.value.name}")
        family = ":" in allocation.cidr
        others = tuple(c for c in node.value.pod_cidrs if (":" in c) != family)
        new = replace(node.value, pod_cidrs=(*others, allocation.cidr)).with_ipam_error(None)
        return self._put_node_if_unchanged(node, new, compare, ops)

    def _put_node_if_unchanged(
        self, node: Versioned[Node], new: Node, compare: list[Compare], ops: list[Put]
    ) -> bool:
        """Write `new` (and `ops`) if the node is still at its revision, keeping the agent's lease."""
        nkey = self.node_key(node.value.name)
        with _store_errors():
            kv = self.client.get(nkey)
            if kv is None or kv.mod_revision != node.revision:
                return False
            writes = [*ops, Put(nkey, new.to_json().encode(), kv.lease)] if new != node.value else ops
            result = self.client.txn([mod_revision_is(nkey, node.revision), *compare], writes)
        return result.succeeded

    # operators

    def register_operator(self, record: OperatorRecord, *, ttl: int = DEFAULT_NODE_TTL) -> LeaseKeeper:
        key = self.operator_key(record.id)
        value = record.to_json().encode()

        def publish(lease: int) -> None:
            self.client.put(key, value, lease=lease)

        with _store_errors():
            return LeaseKeeper(self.client, ttl, publish, threading.RLock(), f"operator {record.id}")

    def list_operators(self) -> list[OperatorRecord]:
        with _store_errors():
            kvs = self.client.get_prefix(self._root + b"operators/").kvs
        return [v.value for v in _parse_all(kvs, OperatorRecord.from_json)]

    # watching

    def _watch(
        self, key: bytes, range_end: bytes | None, parse: Callable[[KeyValue], T]
    ) -> EventStream[StoreEvent[T]]:
        watcher = _RecordWatcher(self.client, key, range_end, parse)

        def produce(sink: StreamSink[StoreEvent[T]]) -> None:
            with _store_errors():
                watcher.run(sink)

        return EventStream(f"store-watch {key.decode(errors='replace')}", produce, watcher.interrupt)


class _RecordWatcher(Generic[T]):
    """List, report `synced`, then follow changes; after a compaction, list again and report the
    difference, so a consumer's view always converges to the store's."""

    def __init__(
        self, client: EtcdClient, key: bytes, range_end: bytes | None, parse: Callable[[KeyValue], T]
    ) -> None:
        self._client = client
        self._key = key
        self._range_end = range_end
        self._parse = parse
        self._known: dict[str, T] = {}
        self._inner: EventStream[WatchEvent] | None = None
        self._lock = threading.Lock()

    def interrupt(self) -> None:
        """Wake the producer, which may be waiting on the etcd watch, so that closing is quick."""
        with self._lock:
            inner = self._inner
        if inner is not None:
            inner.close()

    @staticmethod
    def _name(kv_key: bytes) -> str:
        return kv_key.decode(errors="replace").rsplit("/", 1)[-1]

    def run(self, sink: StreamSink[StoreEvent[T]]) -> None:
        while not sink.closed:
            try:
                listing = self._client.range(self._key, self._range_end)
            except EtcdUnavailableError:
                if sink.wait_closed(_RETRY_DELAY):
                    return
                continue
            current = {
                self._name(kv.key): value
                for kv in listing.kvs
                if (value := _parse_kv(kv, self._parse)) is not None
            }
            for name in self._known.keys() - current.keys():
                sink.emit(StoreEvent("delete", name, self._known[name], listing.revision))
            for name, value in current.items():
                if self._known.get(name) != value:
                    sink.emit(StoreEvent("put", name, value, listing.revision))
            self._known = current
            sink.emit(StoreEvent("synced", "", None, listing.revision))
            try:
                self._follow(sink, listing.revision + 1)
            except WatchCompactedError as exc:
                log.info(
                    "watch on %s fell behind (%s); listing again", self._key.decode(errors="replace"), exc
                )

    def _follow(self, sink: StreamSink[StoreEvent[T]], start_revision: int) -> None:
        events = self._client.watch(self._key, self._range_end, start_revision=start_revision)
        with self._lock:
            self._inner = events
        with events:
            while not sink.closed and not events.closed:
                event = events.get(timeout=_RETRY_DELAY)
                if event is None:
                    continue
                name = self._name(event.kv.key)
                value = _parse_kv(event.kv, self._parse) if event.kind == "put" else None
                if value is None:
                    # A deletion, or a record that no longer parses: either way the old record is gone.
                    if name in self._known:
                        sink.emit(StoreEvent("delete", name, self._known.pop(name), event.revision))
                    continue
                self._known[name] = value
                sink.emit(StoreEvent("put", name, value, event.revision))


class LeaseKeeper:
    """Holds a lease and keeps it alive from a thread; if it is ever lost, grants a new one and
    calls `publish` again, so the records come back after a long outage."""

    def __init__(
        self,
        client: EtcdClient,
        ttl: int,
        publish: Callable[[int], None],
        lock: threading.RLock,
        what: str,
    ) -> None:
        self._client = client
        self._ttl = ttl
        self._publish = publish
        self._lock = lock
        self._what = what
        self._stop = threading.Event()
        self.renewals = 0
        self._last_error: str | None = None
        lease = client.lease_grant(ttl)
        try:
            with lock:
                publish(lease.id)
        except Exception:
            with contextlib.suppress(EtcdError):
                client.lease_revoke(lease.id)
            raise
        self.lease_id = lease.id
        self._interval = max(lease.ttl / 3, 0.5)
        self._thread = threading.Thread(target=self._run, name=f"lease {what}", daemon=True)
        self._thread.start()

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def renew(self) -> None:
        """Grant a new lease and publish under it (the old one expired)."""
        with self._lock:
            lease = self._client.lease_grant(self._ttl)
            self._publish(lease.id)
            self.lease_id = lease.id
            self.renewals += 1
        log.warning("%s: lease had expired; published again under a new lease", self._what)

    def _run(self) -> None:
        delay = self._interval
        while not self._stop.wait(delay):
            try:
                try:
                    self._client.lease_keepalive(self.lease_id)
                except LeaseNotFoundError:
                    self.renew()
                self._last_error = None
                delay = self._interval
            except (EtcdError, StoreError) as exc:
                if self._last_error is None:
                    log.warning("%s: cannot keep the lease alive: %s", self._what, exc)
                self._last_error = str(exc)
                delay = min(_RETRY_DELAY, self._interval)

    def close(self, *, revoke: bool = True) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        if revoke:
            try:
                self._client.lease_revoke(self.lease_id)
            except EtcdError as exc:
                log.warning("%s: lease not revoked (it expires by itself): %s", self._what, exc)


class EtcdNodeRegistration:
    """A node record under a kept-alive lease (see `NodeRegistration`)."""

    def __init__(self, store: EtcdStore, node: Node, ttl: int) -> None:
        self._store = store
        self._client = store.client
        self._key = store.node_key(node.name)
        self._node = node
        self._lock = threading.RLock()
        self._keeper = LeaseKeeper(self._client, ttl, self._publish, self._lock, f"node {node.name}")

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
    def renewals(self) -> int:
        """How often the lease was lost and the node published again."""
        return self._keeper.renewals

    @property
    def last_error(self) -> str | None:
        return self._keeper.last_error

    def _publish(self, lease: int) -> None:
        """Write our record under `lease`, keeping a pod CIDR the store already has for this node."""
        for _ in range(_CAS_ATTEMPTS):
            kv = self._client.get(self._key)
            node = self._node
            if kv is not None and not node.pod_cidrs:
                stored = _parse_kv(kv, lambda v: Node.from_json(v.value))
                if stored is not None and stored.pod_cidrs:
                    node = replace(node, pod_cidrs=stored.pod_cidrs)
            compare = key_missing(self._key) if kv is None else mod_revision_is(self._key, kv.mod_revision)
            if self._client.txn([compare], [Put(self._key, node.to_json().encode(), lease)]).succeeded:
                self._node = node
                return
        raise ConflictError(f"node {self.name} kept changing while it was being registered")

    def update(self, mutate: Callable[[Node], Node]) -> Node:
        with _store_errors(), self._lock:
            for _ in range(_CAS_ATTEMPTS):
                kv = self._client.get(self._key)
                current = _parse_kv(kv, lambda v: Node.from_json(v.value)) if kv is not None else None
                new = _checked_mutation(mutate, current or self._node)
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
        deadline = time.monotonic() + timeout
        last: Node | None = None
        with self._store.watch_node(self.name) as events, _store_errors():
            while (left := deadline - time.monotonic()) > 0 and not (stop is not None and stop.is_set()):
                event = events.get(timeout=min(left, _RETRY_DELAY))
                if event is None or event.kind != "put" or event.value is None:
                    continue
                last = event.value
                if last.pod_cidrs:
                    with self._lock:
                        self._node = replace(self._node, pod_cidrs=last.pod_cidrs)
                    return last.pod_cidrs
        why = last.ipam_error if last is not None else None
        why = why or "no IPAM error recorded; is the operator running?"
        if stop is not None and stop.is_set():
            raise PodCIDRTimeoutError(f"stopped while node {self.name} waited for a pod CIDR: {why}")
        raise PodCIDRTimeoutError(f"node {self.name} has no pod CIDR after {timeout:g} s: {why}")

    def close(self, *, revoke: bool = True) -> None:
        self._keeper.close(revoke=revoke)


def _checked_mutation(mutate: Callable[[Node], Node], node: Node) -> Node:
    new = mutate(node)
    if not isinstance(new, Node):
        raise StoreError("a node update must return a Node")
    if new.name != node.name:
        raise StoreError(f"a node update cannot rename {node.name} to {new.name}")
    return new


def _secret_parser(name: str, namespace: str) -> Callable[[bytes], KeySecret]:
    def parse(value: bytes) -> KeySecret:
        try:
            text = value.decode()
        except UnicodeDecodeError:
            raise RecordError(f"secret {namespace}/{name} is not UTF-8 text") from None
        return KeySecret(keys=text, name=name, namespace=namespace)

    return parse


def _parse_kv(kv: KeyValue, parse: Callable[[KeyValue], T]) -> T | None:
    """A record, or None (and a log line) if the stored bytes are not a valid record."""
    try:
        return parse(kv)
    except RecordError as exc:
        log.warning("ignoring %s: %s", kv.key.decode(errors="replace"), exc)
        return None


def _parse(kv: KeyValue, parse: Callable[[bytes], T]) -> Versioned[T] | None:
    value = _parse_kv(kv, lambda v: parse(v.value))
    return Versioned(value, kv.mod_revision) if value is not None else None


def _parse_all(kvs: tuple[KeyValue, ...], parse: Callable[[bytes], T]) -> list[Versioned[T]]:
    return [v for kv in kvs if (v := _parse(kv, parse)) is not None]
