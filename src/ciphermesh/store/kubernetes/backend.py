"""`KubernetesBackend`: the store contract (`ciphermesh.store.base.Backend`) on a kube-apiserver; the
objects are described in `objects`. Compare-and-swap is an update carrying `resourceVersion` (409 = lost)."""

from __future__ import annotations

import logging
from pathlib import Path

from ciphermesh.store.base import Expect, Precondition, Revision, StoreEvent, Versioned
from ciphermesh.store.errors import ConflictError, RecordError
from ciphermesh.store.kubernetes.client import (
    CONFLICT,
    NOT_FOUND,
    JSONObject,
    KubeApiError,
    KubeClient,
    KubeConfig,
)
from ciphermesh.store.kubernetes.leases import (
    KubeNodeRegistration,
    KubeOperatorRegistration,
    get_or_none,
    operator_of,
)
from ciphermesh.store.kubernetes.objects import (
    CILIUM_NODES,
    COMPONENT,
    NODE_LEASE_NAMESPACE,
    NODE_LEASE_PREFIX,
    OPERATOR_NAMESPACE,
    PART_OF,
    cilium_node,
    key_secret_of,
    lease_live,
    leases,
    name_of,
    node_lease_name,
    revision_of,
    secret_object,
    secrets,
)
from ciphermesh.store.kubernetes.watch import iter_live_nodes, versioned_node, watch_nodes, watch_objects
from ciphermesh.store.model import KeySecret, Node, OperatorRecord
from ciphermesh.store.stream import EventStream

log = logging.getLogger(__name__)

_NODE_LEASES = {"labelSelector": f"{PART_OF}=ciphermesh,{COMPONENT}=agent"}
_OPERATOR_LEASES = {"labelSelector": f"{PART_OF}=ciphermesh,{COMPONENT}=operator"}


class KubernetesBackend:
    """One cluster's records as Kubernetes objects; `cluster` names it (the API server is the cluster)."""

    def __init__(self, api: KubeClient, cluster: str) -> None:
        self.api = api
        self.cluster = cluster

    @classmethod
    def connect(cls, kubeconfig: Path, cluster: str, *, timeout: float = 5.0) -> KubernetesBackend:
        return cls(KubeClient(KubeConfig.from_file(kubeconfig), timeout=timeout), cluster)

    def close(self) -> None:
        self.api.close()

    # nodes

    def _node_lease(self, name: str) -> JSONObject | None:
        return get_or_none(self.api, f"{leases(NODE_LEASE_NAMESPACE)}/{node_lease_name(name)}")

    def register_node(self, node: Node, *, ttl: int) -> KubeNodeRegistration:
        return KubeNodeRegistration(self.api, node, ttl, self.watch_nodes)

    def get_node(self, name: str) -> Versioned[Node] | None:
        obj = get_or_none(self.api, f"{CILIUM_NODES}/{name}")
        if obj is None:
            return None
        found = list(iter_live_nodes([obj], {name: lease} if (lease := self._node_lease(name)) else {}))
        return Versioned(*found[0]) if found else None

    def list_nodes(self) -> list[Versioned[Node]]:
        objects = self.api.request("GET", CILIUM_NODES).get("items") or []
        listed = self.api.request("GET", leases(NODE_LEASE_NAMESPACE), params=_NODE_LEASES).get("items") or []
        by_node = {name_of(lease).removeprefix(NODE_LEASE_PREFIX): lease for lease in listed}
        return [Versioned(node, rev) for node, rev in iter_live_nodes(objects, by_node)]

    def held_pod_cidrs(self) -> dict[str, tuple[str, ...]]:
        # Every CiliumNode, its Lease live or not: it stays until its Node goes (node GC), and its agent's
        # next registration carries its pod CIDRs over, as Cilium's allocation follows the CiliumNode.
        objects = self.api.request("GET", CILIUM_NODES).get("items") or []
        nodes = (found[0] for obj in objects if (found := versioned_node(obj)) is not None)
        return {node.name: node.pod_cidrs for node in nodes if node.pod_cidrs}

    def write_node(self, node: Node, expect: Revision) -> Versioned[Node] | None:
        path = f"{CILIUM_NODES}/{node.name}"
        stored = get_or_none(self.api, path)
        # A lapsed node is gone for every reader, so a write must not bring it back either.
        if stored is None or revision_of(stored) != expect or not lease_live(self._node_lease(node.name)):
            return None
        try:
            written = self.api.request("PUT", path, cilium_node(node, stored))
        except KubeApiError as exc:
            if exc.code in (CONFLICT, NOT_FOUND):
                return None
            raise
        return Versioned(node, revision_of(written))

    def delete_node(self, name: str, expect: Precondition) -> bool:
        if expect is Expect.ABSENT:
            return False
        body = None if expect is Expect.ANY else {"preconditions": {"resourceVersion": expect}}
        try:
            self.api.request("DELETE", f"{CILIUM_NODES}/{name}", body)
        except KubeApiError as exc:
            if exc.code in (CONFLICT, NOT_FOUND):
                return False
            raise
        return True

    def watch_nodes(self, name: str | None = None) -> EventStream[StoreEvent[Node]]:
        return watch_nodes(self.api, name)

    # the key secret

    def get_key_secret(self, name: str, namespace: str) -> Versioned[KeySecret] | None:
        obj = get_or_none(self.api, f"{secrets(namespace)}/{name}")
        if obj is None:
            return None
        try:
            return Versioned(key_secret_of(obj), revision_of(obj))
        except RecordError as exc:
            log.warning("ignoring secret %s/%s: %s", namespace, name, exc)
            return None

    def write_key_secret(self, secret: KeySecret, expect: Precondition) -> Versioned[KeySecret]:
        path = f"{secrets(secret.namespace)}/{secret.name}"
        changed = ConflictError(
            f"secret {secret.namespace}/{secret.name} changed since it was read; read it again"
        )
        if expect is Expect.ABSENT:
            try:
                written = self.api.request("POST", secrets(secret.namespace), secret_object(secret))
            except KubeApiError as exc:
                if exc.code == CONFLICT:
                    raise ConflictError(
                        f"secret {secret.namespace}/{secret.name} exists already; read it again"
                    ) from None
                raise
            return Versioned(secret, revision_of(written))
        stored = get_or_none(self.api, path)
        if stored is None:
            if expect is not Expect.ANY:
                raise changed
            return self.write_key_secret(secret, Expect.ABSENT)
        if expect is not Expect.ANY and revision_of(stored) != expect:
            raise changed
        body = secret_object(secret, stored)
        if expect is Expect.ANY:
            del body["metadata"]["resourceVersion"]  # unconditional: no compare to lose
        try:
            written = self.api.request("PUT", path, body)
        except KubeApiError as exc:
            if exc.code in (CONFLICT, NOT_FOUND):
                raise changed from None
            raise
        return Versioned(secret, revision_of(written))

    def watch_key_secret(self, name: str, namespace: str) -> EventStream[StoreEvent[KeySecret]]:
        selectors = {"fieldSelector": f"metadata.name={name}"}
        return watch_objects(self.api, secrets(namespace), selectors, key_secret_of, "Secret")

    # operators

    def register_operator(self, record: OperatorRecord, *, ttl: int) -> KubeOperatorRegistration:
        return KubeOperatorRegistration(self.api, record, ttl)

    def list_operators(self) -> list[OperatorRecord]:
        listed = (
            self.api.request("GET", leases(OPERATOR_NAMESPACE), params=_OPERATOR_LEASES).get("items") or []
        )
        return [r for lease in listed if lease_live(lease) and (r := operator_of(lease)) is not None]
