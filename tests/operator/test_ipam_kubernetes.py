"""The operator's IPAM on a real kube-apiserver: a CiliumNode outlives its agent's Lease and comes back
with its pod CIDR when the agent does, so while it is kept its CIDR goes to no other node (a CI lab once
gave two nodes 10.0.0.0/24 this way)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from ciphermesh.operator.controller import OperatorConfig, run_operator
from ciphermesh.store.kubernetes.backend import KubernetesBackend
from ciphermesh.store.kubernetes.objects import NODES
from ciphermesh.store.model import Node
from ciphermesh.store.store import Store
from tests.support.kube import KubeCluster
from tests.support.wait import wait_until

DEADLINE = 60.0
TTL = 2


@pytest.fixture
def store(kube: KubeCluster) -> Iterator[Store]:
    with Store(KubernetesBackend.connect(kube.kubeconfig, "ipam")) as store:
        yield store


@pytest.fixture
def operator(store: Store) -> Iterator[None]:
    stop = threading.Event()
    config = OperatorConfig(cluster_pool_ipv4_cidrs=("10.0.0.0/16",), lease_ttl=TTL)
    thread = threading.Thread(target=run_operator, args=(store, config, stop), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive()


def agent_node(index: int) -> Node:
    return Node(name=f"node-{index}", node_ip=f"192.0.2.{index}", boot_id=f"boot-{index}")


def test_a_lapsed_node_keeps_its_cidr_and_a_node_joining_meanwhile_gets_another(
    store: Store, operator: None
) -> None:
    assert isinstance(store.backend, KubernetesBackend)
    for index in (1, 2):  # their v1 Nodes, so that node GC leaves the CiliumNodes alone
        store.backend.api.request("POST", NODES, {"apiVersion": "v1", "kind": "Node",
                                                  "metadata": {"name": f"node-{index}"}})
    one = store.register_node(agent_node(1), ttl=TTL)
    assert one.wait_for_pod_cidrs(DEADLINE) == ("10.0.0.0/24",)
    one.close(revoke=False)  # the agent dies: its Lease lapses, its CiliumNode stays
    wait_until(lambda: store.get_node("node-1") is None, DEADLINE, "node-1 to lapse")
    assert store.held_pod_cidrs() == {"node-1": ("10.0.0.0/24",)}
    two = store.register_node(agent_node(2), ttl=TTL)
    back = None
    try:
        assert two.wait_for_pod_cidrs(DEADLINE) == ("10.0.1.0/24",)
        back = store.register_node(agent_node(1), ttl=TTL)
        assert back.node.pod_cidrs == ("10.0.0.0/24",)
        nodes = {n.value.name: n.value for n in store.list_nodes()}
        assert {name: node.pod_cidrs for name, node in nodes.items()} == {
            "node-1": ("10.0.0.0/24",), "node-2": ("10.0.1.0/24",)}
        assert all(node.ipam_error is None for node in nodes.values())
    finally:
        two.close()
        if back is not None:
            back.close()
