"""`EtcdBackend`: the store contract (`ciphermesh.store.base.Backend`) on etcd; layout in `records`."""

from __future__ import annotations

from ciphermesh.store.base import Expect, Precondition, Revision, StoreEvent, Versioned
from ciphermesh.store.errors import ConflictError
from ciphermesh.store.etcd.client import EtcdClient
from ciphermesh.store.etcd.messages import Delete, LeaseNotFoundError, Put, prefix_end
from ciphermesh.store.etcd.records import (
    KeyLayout,
    compare,
    revision,
    secret_parser,
    store_errors,
    versioned,
    versioned_all,
)
from ciphermesh.store.etcd.registrations import EtcdNodeRegistration, EtcdOperatorRegistration
from ciphermesh.store.etcd.watch import watch_records
from ciphermesh.store.model import KeySecret, Node, OperatorRecord
from ciphermesh.store.stream import EventStream


class EtcdBackend:
    """One cluster's records in etcd."""

    def __init__(self, client: EtcdClient, cluster: str) -> None:
        self.keys = KeyLayout(cluster)
        self.cluster = cluster
        self.client = client

    @classmethod
    def connect(cls, endpoint: str, cluster: str, *, timeout: float = 5.0) -> EtcdBackend:
        with store_errors():
            return cls(EtcdClient(endpoint, timeout=timeout), cluster)

    def close(self) -> None:
        self.client.close()

    # nodes

    def register_node(self, node: Node, *, ttl: int) -> EtcdNodeRegistration:
        with store_errors():
            return EtcdNodeRegistration(self.client, self.keys, node, ttl, self.watch_nodes)

    def get_node(self, name: str) -> Versioned[Node] | None:
        with store_errors():
            kv = self.client.get(self.keys.node(name))
        return versioned(kv, Node.from_json) if kv is not None else None

    def list_nodes(self) -> list[Versioned[Node]]:
        with store_errors():
            kvs = self.client.get_prefix(self.keys.nodes).kvs
        return versioned_all(kvs, Node.from_json)

    def held_pod_cidrs(self) -> dict[str, tuple[str, ...]]:
        # A node record lives under its agent's lease: once that lapses, nothing of it is kept.
        return {v.value.name: v.value.pod_cidrs for v in self.list_nodes() if v.value.pod_cidrs}

    def write_node(self, node: Node, expect: Revision) -> Versioned[Node] | None:
        key = self.keys.node(node.name)
        with store_errors():
            kv = self.client.get(key)
            if kv is None or revision(kv.mod_revision) != expect:
                return None
            try:
                # The record stays under the lease of the agent that keeps it alive.
                result = self.client.txn(compare(key, expect), [Put(key, node.to_json().encode(), kv.lease)])
            except LeaseNotFoundError:
                return None
        return Versioned(node, revision(result.revision)) if result.succeeded else None

    def delete_node(self, name: str, expect: Precondition) -> bool:
        key = self.keys.node(name)
        if expect is Expect.ABSENT:
            return False
        with store_errors():
            if expect is Expect.ANY:
                return self.client.delete(key) > 0
            return self.client.txn(compare(key, expect), [Delete(key)]).succeeded

    def watch_nodes(self, name: str | None = None) -> EventStream[StoreEvent[Node]]:
        if name is not None:
            return watch_records(self.client, self.keys.node(name), None, Node.from_json)
        return watch_records(self.client, self.keys.nodes, prefix_end(self.keys.nodes), Node.from_json)

    # the key secret

    def get_key_secret(self, name: str, namespace: str) -> Versioned[KeySecret] | None:
        with store_errors():
            kv = self.client.get(self.keys.secret(name, namespace))
        return versioned(kv, secret_parser(name, namespace)) if kv is not None else None

    def write_key_secret(self, secret: KeySecret, expect: Precondition) -> Versioned[KeySecret]:
        key = self.keys.secret(secret.name, secret.namespace)
        with store_errors():
            result = self.client.txn(compare(key, expect), [Put(key, secret.keys.encode())])
        if not result.succeeded:
            what = "exists already" if expect is Expect.ABSENT else "changed since it was read"
            raise ConflictError(f"secret {secret.namespace}/{secret.name} {what}; read it again")
        return Versioned(secret, revision(result.revision))

    def watch_key_secret(self, name: str, namespace: str) -> EventStream[StoreEvent[KeySecret]]:
        key = self.keys.secret(name, namespace)
        return watch_records(self.client, key, None, secret_parser(name, namespace))

    # operators

    def register_operator(self, record: OperatorRecord, *, ttl: int) -> EtcdOperatorRegistration:
        with store_errors():
            return EtcdOperatorRegistration(self.client, self.keys, record, ttl)

    def list_operators(self) -> list[OperatorRecord]:
        with store_errors():
            kvs = self.client.get_prefix(self.keys.operators).kvs
        return [v.value for v in versioned_all(kvs, OperatorRecord.from_json)]
