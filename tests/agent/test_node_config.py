"""The agent's per-node settings against a real kube-apiserver, as the chart's ServiceAccount: the chart's
CiliumNodeConfig CRD, objects selecting Nodes by label, their defaults over the ConfigMap's data, and
`ciphermesh agent`'s own reading of them up to the engine choice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ciphermesh.agent.node_config import resolve_node_config
from ciphermesh.cli.daemons import node_values
from ciphermesh.cli.errors import CliError
from ciphermesh.cli.main import build_parser
from ciphermesh.install import chart_path
from ciphermesh.store.kubernetes.backend import KubernetesBackend
from ciphermesh.store.kubernetes.client import KubeClient, KubeConfig
from ciphermesh.store.kubernetes.incluster import in_cluster_config
from ciphermesh.store.kubernetes.node_configs import node_configs_path
from ciphermesh.store.kubernetes.objects import NODES
from ciphermesh.store.store import Store
from tests.support.atomic_volume import write_volume
from tests.support.kube import KubeCluster
from tests.support.kube_rbac import (
    AGENT_RULES,
    NAMESPACE,
    mount_token,
    pod_environment,
    request_token,
    service_account,
)

CONFIG_MAP = {"enable-ipsec": "true", "enable-wireguard": "false", "encryption-engine": "auto"}
CONFIGS = node_configs_path(NAMESPACE)


def _node_config(name: str, selector: dict[str, Any], **defaults: str) -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNodeConfig",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"nodeSelector": selector, "defaults": defaults}}


@pytest.fixture
def admin(kube: KubeCluster) -> Iterator[KubeClient]:
    kube.kubectl("apply", "-f", str(chart_path() / "crds" / "ciliumnodeconfigs.yaml"))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/ciliumnodeconfigs.cilium.io")
    client = KubeClient(KubeConfig.from_file(kube.kubeconfig))
    for name, zone in (("node-1", "a"), ("node-2", "b")):
        client.request("POST", NODES, {"metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "zone": zone}}})
    yield client
    client.close()


@pytest.fixture
def agent_store(kube: KubeCluster, admin: KubeClient, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """The store as the agent's pod opens it: the chart's agent rules, its own token."""
    directory = tmp_path / "serviceaccount"
    pod_environment(kube, directory, monkeypatch)
    service_account(admin, "cilium", AGENT_RULES)
    mount_token(directory, request_token(admin, "cilium"))
    store = Store(KubernetesBackend(KubeClient(in_cluster_config()), "c"))
    yield store
    store.close()


def test_each_node_gets_the_configs_selecting_it_in_name_order(admin: KubeClient, agent_store: Store) -> None:
    admin.request("POST", CONFIGS, _node_config("a-zone-b", {"matchLabels": {"zone": "b"}},
                                                **{"encryption-engine": "kernel"}))
    admin.request("POST", CONFIGS, _node_config(
        "b-node-2", {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In",
                                           "values": ["node-2"]}]}, **{"encryption-engine": "userspace"}))
    admin.request("POST", CONFIGS, _node_config("c-unselected", {"matchLabels": {"zone": "z"}},
                                                **{"encryption-engine": "kernel"}))
    two = resolve_node_config(agent_store, NAMESPACE, "node-2", CONFIG_MAP)
    assert two.data == {**CONFIG_MAP, "encryption-engine": "userspace"}
    assert two.sources == ("config-map:kube-system/cilium-config", "cilium-node-config:kube-system/a-zone-b",
                           "cilium-node-config:kube-system/b-node-2")
    one = resolve_node_config(agent_store, NAMESPACE, "node-1", CONFIG_MAP)
    assert one.data == CONFIG_MAP and one.sources == ("config-map:kube-system/cilium-config",)
    # Another namespace's objects are not the agent's, even one selecting every node.
    admin.request("POST", node_configs_path("default"), {
        **_node_config("everyone", {}, **{"encryption-engine": "kernel"}),
        "metadata": {"name": "everyone", "namespace": "default"}})
    assert resolve_node_config(agent_store, NAMESPACE, "node-1", CONFIG_MAP).data == CONFIG_MAP


def test_the_agent_command_applies_them_and_reports_refused_keys(
    admin: KubeClient, agent_store: Store, tmp_path: Path
) -> None:
    selector = {"matchLabels": {"kubernetes.io/hostname": "node-2"}}
    admin.request("POST", CONFIGS, _node_config("node-2", selector,
                                                **{"encryption-engine": "userspace", "mtu": "1300"}))
    write_volume(tmp_path / "config-map", CONFIG_MAP)
    args = build_parser().parse_args([
        "agent", "--store=kubernetes", f"--config-dir={tmp_path / 'config-map'}", "--node=node-2",
        "--node-ip=192.0.2.2", f"--status-socket={tmp_path / 's.sock'}", "--k8s-namespace=kube-system"])
    values, resolved = node_values(args, agent_store)
    assert values.text("encryption.engine") == "userspace" and values.number("MTU") == 0
    assert resolved.problems == ("CiliumNodeConfig kube-system/node-2: mtu: set for the whole cluster, not "
                                 "per node (per node: encryption-engine); ignored",)
    # A node that is not registered cannot be matched: the agent does not start on a guess.
    args.node = "node-9"
    with pytest.raises(CliError, match="Node node-9 is not registered"):
        node_values(args, agent_store)
