"""`Store`: the one face of the cluster's shared state that the agent, the operator and the CLI use.

It holds what must not differ between backends: the key secret is validated here (by
`ciphermesh.keys.parse_secret`) before any backend sees it, and the read-modify-write loops over a
node record (an update, the operator's pod CIDR and IPAM error) are built here on the backend's one
compare-and-swap.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import replace

from ciphermesh.keys import parse_secret
from ciphermesh.store.base import (
    DEFAULT_NODE_TTL,
    Backend,
    Expect,
    NodeRegistration,
    OperatorRegistration,
    Precondition,
    Revision,
    StoreEvent,
    Versioned,
)
from ciphermesh.store.errors import ConflictError, InvalidSecretError, NodeNotFoundError
from ciphermesh.store.model import (
    DEFAULT_SECRET_NAME,
    SECRET_NAMESPACE,
    KeySecret,
    Node,
    OperatorRecord,
)
from ciphermesh.store.node_records import checked_mutation
from ciphermesh.store.stream import EventStream

CAS_ATTEMPTS = 50


class Store:
    """Nodes, the key secret and operators of one cluster, over one `Backend`."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @property
    def cluster(self) -> str:
        return self.backend.cluster

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # nodes

    def register_node(self, node: Node, *, ttl: int = DEFAULT_NODE_TTL) -> NodeRegistration:
        """Publish `node`, kept alive until closed; a pod CIDR already recorded for it is kept."""
        return self.backend.register_node(node, ttl=ttl)

    def get_node(self, name: str) -> Versioned[Node] | None:
        return self.backend.get_node(name)

    def list_nodes(self) -> list[Versioned[Node]]:
        return self.backend.list_nodes()

    def held_pod_cidrs(self) -> dict[str, tuple[str, ...]]:
        """Node name -> the pod CIDRs its record holds, its agent live or not (what IPAM must not reuse)."""
        return self.backend.held_pod_cidrs()

    def write_node(self, node: Node, expect: Revision) -> Versioned[Node] | None:
        """Compare-and-swap one node record; None if it changed since `expect` or is gone."""
        return self.backend.write_node(node, expect)

    def delete_node(self, name: str, *, expect: Precondition = Expect.ANY) -> bool:
        return self.backend.delete_node(name, expect)

    def update_node(self, name: str, mutate: Callable[[Node], Node]) -> Versioned[Node]:
        """Apply `mutate` to a node's current record (retried on conflict), keeping it alive.

        Raises `NodeNotFoundError` if the node has no record."""
        for _ in range(CAS_ATTEMPTS):
            current = self.backend.get_node(name)
            if current is None:
                raise NodeNotFoundError(f"node {name} is not registered")
            written = self.backend.write_node(checked_mutation(mutate, current.value), current.revision)
            if written is not None:
                return written
        raise ConflictError(f"node {name} kept changing; gave up after {CAS_ATTEMPTS} attempts")

    def assign_pod_cidr(self, node: Versioned[Node], cidr: str) -> Versioned[Node] | None:
        """Give the node `cidr` as its pod CIDR of that family and clear its IPAM error, if the record
        is still at `node.revision`; None otherwise. Allocation is exactly this one write."""
        network = ipaddress.ip_network(cidr)
        others = tuple(c for c in node.value.pod_cidrs if ipaddress.ip_network(c).version != network.version)
        new = replace(node.value, pod_cidrs=(*others, str(network))).with_ipam_error(None)
        return self.backend.write_node(new, node.revision)

    def set_ipam_error(self, node: Versioned[Node], message: str | None) -> bool:
        """Replace the node's `IPAM: ` error (None clears it); False if the node changed."""
        new = node.value.with_ipam_error(message)
        return new == node.value or self.backend.write_node(new, node.revision) is not None

    def watch_nodes(self) -> EventStream[StoreEvent[Node]]:
        """Every live node as `put`, then `synced`, then changes; re-lists by itself when it must."""
        return self.backend.watch_nodes()

    def watch_node(self, name: str) -> EventStream[StoreEvent[Node]]:
        return self.backend.watch_nodes(name)

    # the key secret

    def get_key_secret(
        self, *, name: str = DEFAULT_SECRET_NAME, namespace: str = SECRET_NAMESPACE
    ) -> Versioned[KeySecret] | None:
        """The secret as stored, valid or not (the agents say why they keep their last good key)."""
        return self.backend.get_key_secret(name, namespace)

    def put_key_secret(
        self,
        keys: str,
        *,
        name: str = DEFAULT_SECRET_NAME,
        namespace: str = SECRET_NAMESPACE,
        expect: Precondition = Expect.ANY,
    ) -> Versioned[KeySecret]:
        """Store the secret's `keys` text verbatim once `parse_secret` accepts it, else
        `InvalidSecretError` (never naming key material); `ConflictError` if `expect` does not hold."""
        try:
            secret = KeySecret(keys=keys, name=name, namespace=namespace)
            parse_secret(keys)
        except ValueError as exc:
            raise InvalidSecretError(f"secret {namespace}/{name} not stored: {exc}") from None
        return self.backend.write_key_secret(secret, expect)

    def watch_key_secret(
        self, *, name: str = DEFAULT_SECRET_NAME, namespace: str = SECRET_NAMESPACE
    ) -> EventStream[StoreEvent[KeySecret]]:
        return self.backend.watch_key_secret(name, namespace)

    # operators

    def register_operator(
        self, record: OperatorRecord, *, ttl: int = DEFAULT_NODE_TTL
    ) -> OperatorRegistration:
        """Publish the operator's record, kept alive until closed; it campaigns to lead."""
        return self.backend.register_operator(record, ttl=ttl)

    def list_operators(self) -> list[OperatorRecord]:
        return self.backend.list_operators()
