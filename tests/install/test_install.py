"""`ciphermesh install|uninstall` against a real kube-apiserver: the manifests pass the server's dry run,
helm installs, upgrades and removes them, and the ServiceAccounts can do what the store's calls need and
nothing more (kubectl auth can-i, then the calls themselves with the accounts' tokens)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ciphermesh.cli.main import main
from ciphermesh.config import load_values
from ciphermesh.install import Helm
from ciphermesh.keys import generate_line
from ciphermesh.operator.key_secret import rotate_key
from ciphermesh.store.kubernetes.backend import KubernetesBackend
from ciphermesh.store.kubernetes.client import KubeApiError
from ciphermesh.store.model import Node, OperatorRecord
from ciphermesh.store.store import Store
from tests.install.rendering import helm
from tests.support.kube import KubeCluster
from tests.support.wait import wait_until

IPSEC = ("encryption.enabled=true", "encryption.type=ipsec")
AUTO_ROTATE = (*IPSEC, "encryption.ipsec.autoRotateInterval=1h")
LEASES = "leases.coordination.k8s.io"
CILIUM_NODES = "ciliumnodes.cilium.io"
NODE_CONFIGS = "ciliumnodeconfigs.cilium.io"
SECRET = "secrets/cilium-ipsec-keys"
# What the release consists of besides the CRD: (kind, name, namespace or None).
RELEASE_OBJECTS = (
    ("daemonset", "cilium", "kube-system"),
    ("deployment", "cilium-operator", "kube-system"),
    ("configmap", "cilium-config", "kube-system"),
    ("serviceaccount", "cilium", "kube-system"),
    ("serviceaccount", "cilium-operator", "kube-system"),
    ("clusterrole", "cilium", None),
    ("clusterrole", "cilium-operator", None),
    ("role", "cilium", "kube-node-lease"),
    ("role", "cilium-config-agent", "kube-system"),
    ("rolebinding", "cilium-config-agent", "kube-system"),
    ("role", "cilium-operator", "kube-system"),
)


@pytest.fixture
def release(cluster: KubeCluster) -> Iterator[None]:
    """Whatever the test does, no release is left for the module's next test."""
    yield
    helm("uninstall", "cilium", "--namespace=kube-system", "--ignore-not-found",
         f"--kubeconfig={cluster.kubeconfig}")


def _install(cluster: KubeCluster, capsys: pytest.CaptureFixture[str], *sets: str) -> str:
    argv = ["install", *(word for expr in sets for word in ("--set", expr)), "--kubeconfig",
            str(cluster.kubeconfig)]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def _get(cluster: KubeCluster, kind: str, name: str, namespace: str | None = "kube-system") -> dict:
    scope = [f"--namespace={namespace}"] if namespace else []
    return json.loads(cluster.kubectl("get", kind, name, *scope, "-o", "json"))


def _exists(cluster: KubeCluster, kind: str, name: str, namespace: str | None) -> bool:
    scope = [f"--namespace={namespace}"] if namespace else []
    return bool(cluster.kubectl("get", kind, name, *scope, "--ignore-not-found", "-o", "name").strip())


@pytest.mark.slow
@pytest.mark.parametrize("sets", [AUTO_ROTATE, ("encryption.enabled=true", "encryption.type=wireguard",
                                                "encryption.nodeEncryption=true"), ()],
                         ids=["ipsec-auto-rotate", "wireguard-node", "disabled"])
def test_the_manifests_pass_the_servers_dry_run(cluster: KubeCluster, sets: tuple[str, ...]) -> None:
    manifests = Helm.pinned(cluster.kubeconfig).template(load_values(sets=sets))
    out = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=manifests)
    assert "daemonset.apps/cilium created (server dry run)" in out
    assert "deployment.apps/cilium-operator created (server dry run)" in out


@pytest.mark.slow
def test_install_upgrade_uninstall(
    cluster: KubeCluster, release: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the CRD, so that it is the chart's crds/ that brings it.
    cluster.kubectl("delete", "crd", "ciliumnodes.cilium.io", "--wait=true")
    out = _install(cluster, capsys, *IPSEC)
    assert "STATUS: deployed" in out
    for kind, name, namespace in RELEASE_OBJECTS:
        assert _exists(cluster, kind, name, namespace), (kind, name)
    for crd in (CILIUM_NODES, NODE_CONFIGS):
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")
    data = _get(cluster, "configmap", "cilium-config")["data"]
    assert (data["enable-ipsec"], data["enable-wireguard"], data["ipsec-key-file"]) == (
        "true", "false", "/etc/ipsec/keys")
    daemonset = _get(cluster, "daemonset", "cilium")
    assert daemonset["metadata"]["labels"]["k8s-app"] == "cilium"
    pod = daemonset["spec"]["template"]
    assert {"cilium-ipsec-secrets", "cilium-config-path"} <= {v["name"] for v in pod["spec"]["volumes"]}
    assert _get(cluster, "deployment", "cilium-operator")["spec"]["replicas"] == 2

    # helm upgrade: the new values reach the ConfigMap, and the pods roll (their template changed).
    _install(cluster, capsys, "encryption.enabled=true", "encryption.type=wireguard")
    assert _get(cluster, "configmap", "cilium-config")["data"]["enable-wireguard"] == "true"
    upgraded = _get(cluster, "daemonset", "cilium")["spec"]["template"]
    checksum = "cilium.io/cilium-configmap-checksum"
    assert upgraded["metadata"]["annotations"][checksum] != pod["metadata"]["annotations"][checksum]
    assert "cilium-ipsec-secrets" not in {v["name"] for v in upgraded["spec"]["volumes"]}

    # uninstall, with the cluster named by $KUBECONFIG this time.
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    assert main(["uninstall"]) == 0, capsys.readouterr().err
    assert "uninstalled" in capsys.readouterr().out
    wait_until(lambda: not any(_exists(cluster, *obj) for obj in RELEASE_OBJECTS), timeout=60,
               message="the release's objects to be gone")
    # Helm keeps CRDs (and so every CiliumNode), as it does for Cilium's.
    assert _exists(cluster, "crd", CILIUM_NODES, None) and _exists(cluster, "crd", NODE_CONFIGS, None)
    assert main(["uninstall"]) == 1
    assert capsys.readouterr().err.startswith("ciphermesh: helm uninstall: Release not loaded: cilium")


def _can(cluster: KubeCluster, account: str, verb: str, resource: str, namespace: str | None) -> bool:
    scope = ["--all-namespaces"] if namespace is None else [f"--namespace={namespace}"]
    done = subprocess.run(
        [str(cluster.binaries["kubectl"]), f"--kubeconfig={cluster.kubeconfig}", "auth", "can-i", verb,
         resource, *scope, f"--as=system:serviceaccount:kube-system:{account}"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    answer = done.stdout.strip()
    assert answer in ("yes", "no"), done.stderr
    return answer == "yes"


# (verb, resource, namespace or None for every namespace, allowed)
AGENT = (
    ("get", "secrets", None, False),
    ("list", "secrets", None, False),
    ("watch", "secrets", None, False),
    ("get", SECRET, "kube-system", False),
    ("get", CILIUM_NODES, None, True),
    ("watch", CILIUM_NODES, None, True),
    ("create", CILIUM_NODES, None, True),
    ("update", CILIUM_NODES, None, True),
    ("patch", CILIUM_NODES, None, False),
    ("delete", CILIUM_NODES, None, False),
    ("list", "nodes", None, True),
    ("update", "nodes", None, False),
    ("create", LEASES, "kube-node-lease", True),
    ("update", LEASES, "kube-node-lease", True),
    ("delete", LEASES, "kube-node-lease", False),
    ("create", LEASES, "kube-system", False),
    ("create", "pods", "kube-system", False),
    ("get", "configmaps", "kube-system", False),
    ("list", NODE_CONFIGS, "kube-system", True),
    ("watch", NODE_CONFIGS, "kube-system", True),
    ("get", NODE_CONFIGS, "kube-system", True),
    ("list", NODE_CONFIGS, "default", False),
    ("create", NODE_CONFIGS, "kube-system", False),
    ("update", NODE_CONFIGS, "kube-system", False),
    ("get", "nodes", None, True),
)
OPERATOR = (
    ("delete", CILIUM_NODES, None, True),
    ("update", CILIUM_NODES, None, True),
    ("create", CILIUM_NODES, None, False),
    ("list", "nodes", None, True),
    ("list", LEASES, "kube-node-lease", True),
    ("update", LEASES, "kube-node-lease", False),
    ("create", LEASES, "kube-system", True),
    ("delete", LEASES, "kube-system", True),
    ("create", "pods", "kube-system", False),
    ("list", "secrets", "kube-system", False),
    ("create", "secrets", "kube-system", False),
    ("get", "secrets/other", "kube-system", False),
    ("delete", SECRET, "kube-system", False),
    ("get", SECRET, "default", False),
)
OPERATOR_ROTATING = (("get", SECRET, "kube-system", True), ("update", SECRET, "kube-system", True),
                     ("patch", SECRET, "kube-system", True), ("watch", SECRET, "kube-system", True))


def _denials(cluster: KubeCluster, account: str, table: tuple[tuple[str, str, str | None, bool], ...]
             ) -> list[str]:
    return [f"{account} {'cannot' if allowed else 'can'} {verb} {resource} in {namespace or 'any namespace'}"
            for verb, resource, namespace, allowed in table
            if _can(cluster, account, verb, resource, namespace) != allowed]


@pytest.mark.slow
def test_the_service_accounts_have_least_privilege(
    cluster: KubeCluster, release: None, capsys: pytest.CaptureFixture[str]
) -> None:
    _install(cluster, capsys, *AUTO_ROTATE)
    assert _denials(cluster, "cilium", AGENT) + _denials(cluster, "cilium-operator", OPERATOR) + _denials(
        cluster, "cilium-operator", OPERATOR_ROTATING) == []
    _install(cluster, capsys, *IPSEC)  # no auto-rotation: no Secret for the operator either
    off = tuple((verb, resource, namespace, False) for verb, resource, namespace, _ in OPERATOR_ROTATING)
    assert _denials(cluster, "cilium-operator", OPERATOR) + _denials(cluster, "cilium-operator", off) == []


def _account_store(cluster: KubeCluster, account: str, tmp_path: Path) -> Store:
    """The store as the ServiceAccount's pods open it: its own token, nothing of the admin's."""
    token = cluster.kubectl("create", "token", account, "--namespace=kube-system").strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    context = {"cluster": admin["clusters"][0]["name"], "user": account}
    kubeconfig = tmp_path / f"{account}.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": account,
        "clusters": admin["clusters"],
        "contexts": [{"name": account, "context": context}],
        "users": [{"name": account, "user": {"token": token}}],
    }))
    kubeconfig.chmod(0o600)
    return Store(KubernetesBackend.connect(kubeconfig, "default"))


@pytest.mark.slow
def test_the_roles_suffice_for_the_stores_calls(
    cluster: KubeCluster, release: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cluster.kubectl("create", "secret", "generic", "cilium-ipsec-keys", "--namespace=kube-system",
                    f"--from-literal=keys={generate_line(key_id=3).format(reveal=True)}")
    cluster.kubectl("create", "-f", "-", stdin=json.dumps(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}))
    try:
        _install(cluster, capsys, *AUTO_ROTATE)
        with _account_store(cluster, "cilium", tmp_path) as agent, \
                _account_store(cluster, "cilium-operator", tmp_path) as operator:
            registration = agent.register_node(Node(name="node-1", node_ip="192.0.2.11", boot_id="boot-1"))
            try:
                agent.update_node("node-1", lambda node: node)
                with pytest.raises(KubeApiError) as denied:
                    agent.get_key_secret()
                assert denied.value.code == 403
                stored = operator.get_node("node-1")
                assert stored is not None and operator.assign_pod_cidr(stored, "10.0.1.0/24") is not None
                assert registration.wait_for_pod_cidrs(30) == ("10.0.1.0/24",)
                record = OperatorRecord(id="op-1", pid=1, pool=("10.0.0.0/8",), mask_size=24)
                leader = operator.register_operator(record)
                assert [r.id for r in operator.list_operators()] == ["op-1"]
                leader.close()
                assert rotate_key(operator, "cilium-ipsec-keys").key_id == 4
            finally:
                # revoke=False: the agent may not delete; the operator removes a gone node's CiliumNode.
                registration.close(revoke=False)
            assert operator.delete_node("node-1")
    finally:
        cluster.kubectl("delete", "secret", "cilium-ipsec-keys", "--namespace=kube-system",
                        "--ignore-not-found")
        cluster.kubectl("delete", "node", "node-1", "--ignore-not-found")
