"""`--store=kubernetes` as a pod runs it: a ServiceAccount token from the TokenRequest API in the mounted
directory, RBAC with exactly what the agent needs (no Secrets), the token rotating under the client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from ciphermesh.agent.key_file import mounted_key_file
from ciphermesh.agent.watch import ClusterView
from ciphermesh.config import load_values
from ciphermesh.keys import generate_line, parse_secret
from ciphermesh.store.kubernetes.backend import KubernetesBackend
from ciphermesh.store.kubernetes.client import JSONObject, KubeApiError, KubeClient, KubeConfig, WatchHandles
from ciphermesh.store.kubernetes.incluster import in_cluster_config
from ciphermesh.store.kubernetes.objects import CILIUM_NODES, NODES
from ciphermesh.store.kubernetes.token import TOKEN_REREAD_SECONDS
from ciphermesh.store.model import Node
from ciphermesh.store.open import open_store
from ciphermesh.store.store import Store
from tests.support.atomic_writer import kubelet_write
from tests.support.kube import KubeCluster
from tests.support.kube_rbac import (
    AGENT_RULES,
    NAMESPACE,
    mount_token,
    pod_environment,
    request_token,
    service_account,
    whoami,
)

DEADLINE = 30.0


@pytest.fixture
def admin(kube: KubeCluster) -> Iterator[KubeClient]:
    client = KubeClient(KubeConfig.from_file(kube.kubeconfig))
    yield client
    client.close()


@pytest.fixture
def in_cluster(kube: KubeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "serviceaccount"
    pod_environment(kube, directory, monkeypatch)
    return directory


def api_of(store: Store) -> KubeClient:
    assert isinstance(store.backend, KubernetesBackend)
    return store.backend.api


def wait_for(what: str, condition: Callable[[], bool], deadline: float = DEADLINE) -> float:
    """Seconds it took for `condition` to hold."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < deadline, f"not within {deadline:g} s: {what}"
        time.sleep(0.1)
    return time.monotonic() - start


class RecordingClient(KubeClient):
    """The real client, noting the path of every request and watch it sends."""

    def __init__(self, config: KubeConfig) -> None:
        super().__init__(config)
        self.paths: list[str] = []

    def _send(
        self, method: str, target: str, data: bytes | None, content_type: str
    ) -> tuple[int, float, bytes]:
        self.paths.append(target)
        return super()._send(method, target, data, content_type)

    def watch(
        self, path: str, params: Mapping[str, str], *, read_timeout: float, handles: WatchHandles
    ) -> Iterator[JSONObject]:
        self.paths.append(path)
        return super().watch(path, params, read_timeout=read_timeout, handles=handles)


def test_the_agent_runs_in_cluster_with_no_permission_on_secrets(
    admin: KubeClient, in_cluster: Path, tmp_path: Path
) -> None:
    service_account(admin, "cilium", AGENT_RULES)
    mount_token(in_cluster, request_token(admin, "cilium"))
    node_uid = admin.request("POST", NODES, {"metadata": {"name": "node-1"}})["metadata"]["uid"]
    client = RecordingClient(in_cluster_config())
    store = Store(KubernetesBackend(client, "c"))
    assert whoami(client) == f"system:serviceaccount:{NAMESPACE}:cilium"
    registration = store.register_node(Node(name="node-1", node_ip="192.0.2.1", boot_id="b1"), ttl=5)
    try:
        with store.watch_nodes() as events:
            seen = [events.get(timeout=DEADLINE) for _ in range(2)]
        assert [(e.kind, e.name) for e in seen if e is not None] == [("put", "node-1"), ("synced", "")]
        registration.update(lambda n: replace(n, key_id=3))
        stored = admin.request("GET", f"{CILIUM_NODES}/node-1")
        assert stored["spec"]["encryption"]["key"] == 3
        assert [o["uid"] for o in stored["metadata"]["ownerReferences"]] == [node_uid]
        with pytest.raises(KubeApiError) as refused:
            store.get_key_secret()
        assert refused.value.code == 403
        client.paths.clear()
        # The agent's key source on this store: the mounted file, never the API's Secret.
        kubelet_write(tmp_path / "ipsec", {"keys": generate_line(key_id=3).format(reveal=True).encode()})
        values = load_values(sets=["encryption.enabled=true", f"encryption.ipsec.mountPath={tmp_path}/ipsec"])
        view = ClusterView(store, "cilium-ipsec-keys", mounted_key_file(store, values, "ipsec"))
        view.start()
        try:
            assert view.wait_synced(DEADLINE)
            secret = view.secret()
            assert secret is not None and parse_secret(secret.keys).key_id == 3
            assert [n.name for n in view.nodes()] == ["node-1"] and view.errors() == []
        finally:
            view.stop()
        assert client.paths and not [p for p in client.paths if "/secrets" in p]
        # The control: on the store's Secret (the etcd mode's source) the same agent would ask for it.
        control = ClusterView(store, "cilium-ipsec-keys", None)
        control.start()
        try:
            assert not control.wait_synced(3.0)
        finally:
            control.stop()
        assert [p for p in client.paths if "/secrets" in p]
    finally:
        registration.close()
        store.close()


def test_a_rotated_token_is_read_again_without_anything_revoked(admin: KubeClient, in_cluster: Path) -> None:
    for name in ("cilium", "cilium-next"):
        service_account(admin, name, AGENT_RULES)
    mount_token(in_cluster, request_token(admin, "cilium"))
    client = KubeClient(in_cluster_config(), token_reread=1.0)
    try:
        assert whoami(client) == f"system:serviceaccount:{NAMESPACE}:cilium"
        # Another ServiceAccount's token, so the server tells which one the client sent.
        mount_token(in_cluster, request_token(admin, "cilium-next"))
        wait_for("the new token sent", lambda: whoami(client).endswith(":cilium-next"))
        assert client.request("GET", CILIUM_NODES)["kind"] == "CiliumNodeList"
    finally:
        client.close()


def test_a_401_reads_the_token_again_at_once(admin: KubeClient, in_cluster: Path, kube: KubeCluster) -> None:
    for name in ("cilium", "cilium-next"):
        service_account(admin, name, AGENT_RULES)
    mount_token(in_cluster, request_token(admin, "cilium"))
    store = open_store("kubernetes", "c")  # as the DaemonSet runs it: the minute-long re-read
    opened = time.monotonic()
    try:
        assert whoami(api_of(store)) == f"system:serviceaccount:{NAMESPACE}:cilium"
        mount_token(in_cluster, request_token(admin, "cilium-next"))
        # Deleting the ServiceAccount makes the cached token fail with 401 before the minute is up.
        admin.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/cilium")
        wait_for("the token re-read after a 401", lambda: whoami(api_of(store)).endswith(":cilium-next"))
        assert time.monotonic() - opened < TOKEN_REREAD_SECONDS, "too slow to tell the 401 from the minute"
        assert store.list_nodes() == []
    finally:
        store.close()
