"""The operator's garbage collection of CiliumNodes whose v1 Node is gone, on a real kube-apiserver."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ciphermesh.operator.controller import OperatorConfig, run_operator
from ciphermesh.operator.node_gc import NodeGarbageCollector
from ciphermesh.store.kubernetes.backend import KubernetesBackend
from ciphermesh.store.kubernetes.client import JSONObject, KubeClient
from ciphermesh.store.kubernetes.leases import get_or_none
from ciphermesh.store.kubernetes.objects import CILIUM_NODES, NODES, name_of
from ciphermesh.store.model import Node
from ciphermesh.store.open import open_store
from ciphermesh.store.store import Store
from tests.support.kube import KubeCluster
from tests.support.kube_rbac import (
    OPERATOR_RULES,
    mount_token,
    pod_environment,
    request_token,
    service_account,
)

DEADLINE = 60.0
TTL = 3


@pytest.fixture
def store(kube: KubeCluster) -> Iterator[Store]:
    with Store(KubernetesBackend.connect(kube.kubeconfig, "gc")) as store:
        yield store


def api_of(store: Store) -> KubeClient:
    assert isinstance(store.backend, KubernetesBackend)
    return store.backend.api


def create_node(api: KubeClient, name: str) -> str:
    """A v1 Node as a kubelet registers it; its uid."""
    created = api.request("POST", NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    return str(created["metadata"]["uid"])


def cilium_node_names(api: KubeClient) -> set[str]:
    return {name_of(o) for o in api.request("GET", CILIUM_NODES).get("items") or []}


def owners(api: KubeClient, name: str) -> list[JSONObject]:
    obj = get_or_none(api, f"{CILIUM_NODES}/{name}")
    assert obj is not None, f"CiliumNode {name} is gone"
    return list(obj["metadata"].get("ownerReferences") or [])


def agent_node(name: str, index: int) -> Node:
    return Node(name=name, node_ip=f"192.0.2.{index}", boot_id=f"boot-{index}")


def wait_for(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"not within {DEADLINE:g} s: {what}"
        time.sleep(0.1)


def test_a_cilium_node_names_its_node_as_owner_even_if_the_node_registers_later(store: Store) -> None:
    api = api_of(store)
    uid = create_node(api, "node-1")
    first = store.register_node(agent_node("node-1", 1), ttl=TTL)
    second = store.register_node(agent_node("node-2", 2), ttl=TTL)
    try:
        assert [(o["kind"], o["name"], o["uid"]) for o in owners(api, "node-1")] == [("Node", "node-1", uid)]
        assert owners(api, "node-2") == []
        late = create_node(api, "node-2")
        wait_for("node-2's CiliumNode owned by its late Node", lambda: bool(owners(api, "node-2")))
        assert [o["uid"] for o in owners(api, "node-2")] == [late]
        # Adding the owner kept what others wrote to the record.
        store.update_node("node-2", lambda n: n.with_ipam_error("IPAM: test"))
        assert (got := store.get_node("node-2")) is not None and got.value.ipam_error == "IPAM: test"
    finally:
        first.close()
        second.close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_only_cilium_nodes_without_a_node_for_the_grace_period_are_deleted(store: Store) -> None:
    api = api_of(store)
    for name in ("node-1", "node-2"):
        create_node(api, name)
    for index, name in enumerate(("node-1", "node-2", "node-3"), start=1):
        # Agents killed: their CiliumNodes stay behind.
        store.register_node(agent_node(name, index), ttl=TTL).close(revoke=False)
    api.request("DELETE", f"{NODES}/node-2")
    clock = Clock()
    collector = NodeGarbageCollector(api, grace=10, clock=clock)
    assert collector.collect() == []  # node-2 and node-3 have no Node: candidates, not garbage yet
    create_node(api, "node-3")  # node-3 was registering: its Node arrives within the grace period
    clock.now = 9.9
    assert collector.collect() == []
    clock.now = 10
    assert collector.collect() == ["node-2"]
    assert cilium_node_names(api) == {"node-1", "node-3"}
    clock.now = 100
    assert collector.collect() == []
    assert cilium_node_names(api) == {"node-1", "node-3"}


def test_the_operator_in_cluster_deletes_the_cilium_node_of_a_deleted_node(
    store: Store, kube: KubeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = api_of(store)
    # The operator as its Deployment runs it: in-cluster, with the operator's RBAC and nothing more.
    service_account(api, "cilium-operator", OPERATOR_RULES)
    pod_environment(kube, tmp_path / "serviceaccount", monkeypatch)
    mount_token(tmp_path / "serviceaccount", request_token(api, "cilium-operator"))
    operator_store = open_store("kubernetes", "gc")
    for name in ("node-1", "node-2", "node-3"):
        create_node(api, name)
    registrations = {
        name: store.register_node(agent_node(name, index), ttl=TTL)
        for index, name in enumerate(("node-1", "node-2", "node-3"), start=1)
    }
    registrations.pop("node-2").close(revoke=False)  # its agent died with it
    api.request("DELETE", f"{NODES}/node-2")
    stop = threading.Event()
    config = OperatorConfig(cluster_pool_ipv4_cidrs=("10.0.0.0/16",), lease_ttl=TTL)
    operator = threading.Thread(target=run_operator, args=(operator_store, config, stop), daemon=True)
    operator.start()
    try:
        wait_for("node-2's CiliumNode collected", lambda: "node-2" not in cilium_node_names(api))
        assert cilium_node_names(api) == {"node-1", "node-3"}
        # The same operator allocated the live nodes' pod CIDRs with those permissions.
        wait_for("pod CIDRs given", lambda: all(n.value.pod_cidrs for n in store.list_nodes()))
        assert {n.value.name for n in store.list_nodes()} == {"node-1", "node-3"}
    finally:
        stop.set()
        operator.join(timeout=15)
        operator_store.close()
        for registration in registrations.values():
            registration.close()
    assert not operator.is_alive()
