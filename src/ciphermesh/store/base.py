"""The store contract: what every backend (etcd today, Kubernetes next) implements.

One record, one compare-and-swap: every read comes with an opaque `Revision` (a token the caller only
hands back, as Kubernetes' `resourceVersion`), and every conditional write names what it expects: a
revision, `Expect.ABSENT` (create only) or `Expect.ANY`. Nothing spans two records, so a node's pod CIDRs
live in the node's own record (as Cilium's `CiliumNode.spec.ipam.podCIDRs`). Liveness is the backend's:
a registration is kept alive until closed, and a node whose registration lapses is gone from every list
and watch. `ciphermesh.store.store.Store` is the one face above the backends that callers use.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, NewType, Protocol, TypeVar

from ciphermesh.store.model import KeySecret, Node, OperatorRecord
from ciphermesh.store.stream import EventStream

T = TypeVar("T")

DEFAULT_NODE_TTL = 10
"""Seconds a node outlives its agent's last keepalive (etcd raises anything below 2 to 2)."""

Revision = NewType("Revision", str)
"""Where a record was last written: opaque, compared only for equality, handed back to a write."""


class Expect(enum.Enum):
    """A write's precondition other than a revision: none at all, or that the record does not exist."""

    ANY = "any"
    ABSENT = "absent"


Precondition = Revision | Expect


@dataclass(frozen=True)
class Versioned(Generic[T]):
    """A record and the revision it was read at."""

    value: T
    revision: Revision


@dataclass(frozen=True)
class StoreEvent(Generic[T]):
    """A change: `put` (value is the record now, at `revision`), `delete` (value is the last known
    record) or `synced` (every record that existed when the listing was taken has been delivered)."""

    kind: Literal["put", "delete", "synced"]
    name: str
    value: T | None
    revision: Revision | None = None


class Registration(Protocol):
    """Records kept alive by this process until closed (etcd: a lease; Kubernetes: a Lease's renewals)."""

    @property
    def last_error(self) -> str | None:
        """Why keeping alive last failed, None while it works."""

    def close(self, *, revoke: bool = True) -> None:
        """Stop keeping alive; with `revoke` the records go at once, else once the registration lapses."""


class NodeRegistration(Registration, Protocol):
    """An agent's node record, kept alive; if the record is ever lost it is published again."""

    @property
    def name(self) -> str: ...

    @property
    def node(self) -> Node:
        """The record as last written or read by this registration."""

    @property
    def republished(self) -> int:
        """How often the record was found gone (lapsed, deleted) and published again."""

    def update(self, mutate: Callable[[Node], Node]) -> Node:
        """Apply `mutate` to the current record and store it (compare-and-swap, retried)."""

    def wait_for_pod_cidrs(self, timeout: float, stop: threading.Event | None = None) -> tuple[str, ...]:
        """Block until the operator has given this node its pod CIDRs; `PodCIDRTimeoutError` says why not."""


class OperatorRegistration(Registration, Protocol):
    """An operator's record, kept alive; at most one registered operator leads at a time."""

    @property
    def leading(self) -> bool:
        """True while this operator holds the leadership and may allocate; re-checked before each pass."""


class Backend(Protocol):
    """The records of one cluster in one backend. Callers go through `Store`, which validates first."""

    cluster: str

    def register_node(self, node: Node, *, ttl: int) -> NodeRegistration:
        """Publish `node`, kept alive until closed; pod CIDRs already recorded for it are kept."""

    def get_node(self, name: str) -> Versioned[Node] | None: ...

    def list_nodes(self) -> list[Versioned[Node]]: ...

    def held_pod_cidrs(self) -> dict[str, tuple[str, ...]]:
        """The pod CIDRs of every node record kept, live or lapsed: a lapsed record that is kept (a
        CiliumNode outlives its agent) comes back with them, so they are not free."""

    def write_node(self, node: Node, expect: Revision) -> Versioned[Node] | None:
        """Replace an existing node record if it is still at `expect`, keeping it alive; None if it
        changed or is gone (a write never brings a node back)."""

    def delete_node(self, name: str, expect: Precondition) -> bool:
        """Remove a node record (at `expect`, or whatever it holds with `Expect.ANY`); False if not."""

    def watch_nodes(self, name: str | None = None) -> EventStream[StoreEvent[Node]]:
        """Every node (or the one named) as `put`, then `synced`, then changes; resumes by itself."""

    def get_key_secret(self, name: str, namespace: str) -> Versioned[KeySecret] | None: ...

    def write_key_secret(self, secret: KeySecret, expect: Precondition) -> Versioned[KeySecret]:
        """Store the secret's text verbatim; `ConflictError` if `expect` does not hold."""

    def watch_key_secret(self, name: str, namespace: str) -> EventStream[StoreEvent[KeySecret]]: ...

    def register_operator(self, record: OperatorRecord, *, ttl: int) -> OperatorRegistration: ...

    def list_operators(self) -> list[OperatorRecord]: ...

    def close(self) -> None: ...
