"""What the Kubernetes backend leaves in the API is what Cilium's users and tools read: CiliumNodes with
Cilium's fields and an owner reference to their Node, the key as the `cilium-ipsec-keys` Secret, Leases."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciphermesh.keys import generate_line
from ciphermesh.store.kubernetes.backend import KubernetesBackend
from ciphermesh.store.model import WG_PUB_KEY_ANNOTATION, Node
from ciphermesh.store.store import Store
from tests.support.kube import KubeCluster

WG_KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[KubeCluster]:
    cluster = KubeCluster(tmp_path / "kube")
    try:
        yield cluster
    finally:
        cluster.close()


def test_records_are_cilium_objects_that_kubectl_reads(cluster: KubeCluster) -> None:
    cluster.kubectl(
        "create",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}),
    )
    node_uid = cluster.kubectl("get", "node", "node-1", "-o", "jsonpath={.metadata.uid}")
    node = Node(
        name="node-1",
        node_ip="192.168.50.11",
        boot_id="boot-1",
        router_ip="10.0.1.1",
        key_id=3,
        annotations={WG_PUB_KEY_ANNOTATION: WG_KEY},
        agent="ready",
        health_endpoint="10.0.1.2:4240",
    )
    line = generate_line(key_id=3).format(reveal=True)
    with Store(KubernetesBackend.connect(cluster.kubeconfig, "cm")) as store:
        registration = store.register_node(node)
        try:
            stored = store.get_node("node-1")
            assert stored is not None and store.assign_pod_cidr(stored, "10.0.1.0/24") is not None
            store.put_key_secret(line)
            cn = json.loads(cluster.kubectl("get", "ciliumnode", "node-1", "-o", "json"))
            assert cn["spec"]["addresses"] == [
                {"type": "InternalIP", "ip": "192.168.50.11"},
                {"type": "CiliumInternalIP", "ip": "10.0.1.1"},
            ]
            assert cn["spec"]["ipam"]["podCIDRs"] == ["10.0.1.0/24"]
            assert cn["spec"]["encryption"] == {"key": 3} and cn["spec"]["bootid"] == "boot-1"
            assert cn["metadata"]["annotations"][WG_PUB_KEY_ANNOTATION] == WG_KEY
            assert cn["metadata"]["annotations"]["ciphermesh.io/health-endpoint"] == "10.0.1.2:4240"
            assert cn["metadata"]["ownerReferences"] == [
                {"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": node_uid}
            ]
            # The printer columns of Cilium's CRD, and the seed's read-back of the Secret.
            table = cluster.kubectl("get", "cn").split()
            assert table[:4] == ["NAME", "CILIUMINTERNALIP", "INTERNALIP", "AGE"] and table[4:7] == [
                "node-1",
                "10.0.1.1",
                "192.168.50.11",
            ]
            keys = cluster.kubectl(
                "get", "secret", "-n", "kube-system", "cilium-ipsec-keys", "-o", "jsonpath={.data.keys}"
            )
            assert base64.b64decode(keys).decode() == line
            lease = json.loads(
                cluster.kubectl("get", "lease", "-n", "kube-node-lease", "ciphermesh-node-1", "-o", "json")
            )
            assert lease["spec"]["holderIdentity"] == "node-1" and lease["spec"]["leaseDurationSeconds"] == 10
        finally:
            registration.close()
    assert "node-1" not in cluster.kubectl("get", "cn", "-o", "name")
