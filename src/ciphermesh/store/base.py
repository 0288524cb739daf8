"""The `Store` interface that the agent, the operator and the CLI use; backends implement it.

Every record read comes with its revision, and every conditional write takes the revision it
expects, so that concurrent writers (two operators, an agent and the operator) never lose an
update: a write whose expectation no longer holds returns False and the caller re-reads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from ciphermesh.store.errors import (
    ConflictError,
    InvalidSecretError,
    NodeNotFoundError,
    PodCIDRTimeoutError,
    RecordError,
    StoreError,
    StoreUnavailableError,
)
from ciphermesh.store.model import (
    DEFAULT_SECRET_NAME,
    SECRET_NAMESPACE,
    IPAMAllocation,
    KeySecret,
    Node,
    OperatorRecord,
)
from ciphermesh.store.stream import EventStream

T = TypeVar("T")

__all__ = [
    "DEFAULT_NODE_TTL",
    "ConflictError",
    "InvalidSecretError",
    "NodeNotFoundError",
    "NodeRegistration",
    "PodCIDRTimeoutError",
    "RecordError",
    "Registration",
    "Store",
    "StoreError",
    "StoreEvent",
    "StoreUnavailableError",
    "Versioned",
]

DEFAULT_NODE_TTL = 10
"""Seconds a node outlives its agent's last keepalive (etcd raises anything below 2 to 2)."""


@dataclass(frozen=True)
class Versioned(Generic[T]):
    """A record and the store revision it was last written at."""

    value: T
    revision: int


@dataclass(frozen=True)
class StoreEvent(Generic[T]):
    """A change: `put` (value is the new record), `delete` (value is the last known record),
    or `synced` (every record that existed at `revision` has been delivered; name and value empty)."""

    kind: Literal["put", "delete", "synced"]
    name: str
    value: T | None
    revision: int


class Registration(Protocol):
    """Something kept alive under a lease until closed."""

    @property
    def last_error(self) -> str | None:
        """Why the last keepalive failed, None while it works."""

    def close(self, *, revoke: bool = True) -> None:
        """Stop keeping alive; with `revoke` the records go at once, else when the lease expires."""


class NodeRegistration(Registration, Protocol):
    """An agent's node record, kept alive under a lease and re-published if the lease is ever lost."""

    @property
    def name(self) -> str: ...

    @property
    def node(self) -> Node:
        """The record as last written or read by this registration."""

    def update(self, mutate: Callable[[Node], Node]) -> Node:
        """Apply `mutate` to the current record and store it (compare-and-swap, retried)."""

    def wait_for_pod_cidrs(self, timeout: float, stop: threading.Event | None = None) -> tuple[str, ...]:
        """Block until the operator has given this node its pod CIDRs; `PodCIDRTimeoutError` says why not."""


class Store(Protocol):
    """Nodes, the key secret, IPAM allocations and operators of one cluster."""

    cluster: str

    def register_node(self, node: Node, *, ttl: int = DEFAULT_NODE_TTL) -> NodeRegistration:
        """Publish `node` under a lease kept alive until closed; a pod CIDR already recorded is kept."""

    def get_node(self, name: str) -> Versioned[Node] | None: ...

    def list_nodes(self) -> list[Versioned[Node]]: ...

    def update_node(self, name: str, mutate: Callable[[Node], Node]) -> Versioned[Node]:
        """Compare-and-swap `mutate` onto a node's record, keeping its lease.

        Raises `NodeNotFoundError` if the node has no record."""

    def watch_nodes(self) -> EventStream[StoreEvent[Node]]:
        """Every existing node as `put`, then `synced`, then changes; re-lists by itself when it must."""

    def watch_node(self, name: str) -> EventStream[StoreEvent[Node]]:
        """The same for one node's record."""

    def get_key_secret(
        self, *, name: str = DEFAULT_SECRET_NAME, namespace: str = SECRET_NAMESPACE
    ) -> Versioned[KeySecret] | None: ...

    def put_key_secret(
        self,
        keys: str,
        *,
        name: str = DEFAULT_SECRET_NAME,
        namespace: str = SECRET_NAMESPACE,
        expect_revision: int | None = None,
    ) -> Versioned[KeySecret]:
        """Store the secret's `keys` text verbatim once `ciphermesh.keys.parse_secret` accepts it.

        `expect_revision`: None writes unconditionally, 0 only if absent, else only over that revision.
        """

    def watch_key_secret(
        self, *, name: str = DEFAULT_SECRET_NAME, namespace: str = SECRET_NAMESPACE
    ) -> EventStream[StoreEvent[KeySecret]]: ...

    def list_allocations(self) -> list[Versioned[IPAMAllocation]]: ...

    def claim_pod_cidr(self, node: Versioned[Node], allocation: IPAMAllocation) -> bool:
        """Atomically record a new allocation and set it as the node's pod CIDR (clearing its IPAM
        error); False if the CIDR is already allocated or the node changed since `node.revision`."""

    def bind_pod_cidr(self, node: Versioned[Node], allocation: Versioned[IPAMAllocation]) -> bool:
        """Set an existing allocation (of this node) as its pod CIDR; False if either record changed."""

    def release_pod_cidr(self, allocation: Versioned[IPAMAllocation], node: Versioned[Node] | None) -> bool:
        """Delete an allocation if it is unchanged and its node is still absent (`node` None) or still
        at `node.revision`; False otherwise."""

    def set_ipam_error(self, node: Versioned[Node], message: str | None) -> bool:
        """Replace the node's `IPAM: ` error (None clears it); False if the node changed."""

    def register_operator(self, record: OperatorRecord, *, ttl: int = DEFAULT_NODE_TTL) -> Registration: ...

    def list_operators(self) -> list[OperatorRecord]: ...

    def close(self) -> None: ...
