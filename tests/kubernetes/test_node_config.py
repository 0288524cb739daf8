"""Per-node settings on Kubernetes: `lab up --node-set node-2:encryption.engine=userspace` becomes a
CiliumNodeConfig selecting node-2 before the chart starts any agent, so node-2 alone runs on its own
setting (on this host every engine is userspace, so the reason status gives is what shows the override);
a second `lab up` changes nothing; a CiliumNodeConfig added later applies only when the agent restarts,
and a key no node may override is an error in that agent's status and log, the cluster's value kept.
One 3-node lab, in order."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ciphermesh.lab.cluster import agent_status, load_lab
from ciphermesh.lab.info import LabInfo
from ciphermesh.store.third_party import third_party_binary
from tests.support.lab import lab_guard, node_entries, run_cli
from tests.support.names import unique_lab
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.timeout(600),
]

UP = ("--nodes", "3", "--control-plane", "kubernetes", "--set", "encryption.enabled=true",
      "--set", "encryption.type=ipsec", "--node-set", "node-2:encryption.engine=userspace")
UP_TIMEOUT = 360.0
OWN = "ciphermesh-lab-node-2"
SOURCE = f"cilium-node-config:kube-system/{OWN}"
BAD = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumNodeConfig",
    "metadata": {"name": "zz-late", "namespace": "kube-system"},
    "spec": {"nodeSelector": {"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-3"]}]},
        "defaults": {"encryption-engine": "userspace", "enable-wireguard": "true"}},
}


def kubectl(info: LabInfo, *args: str, stdin: str | None = None) -> str:
    argv = [str(third_party_binary("kubectl")), f"--kubeconfig={info.paths.kubeconfig}", *args]
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def node_config(info: LabInfo, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(kubectl(info, "get", "ciliumnodeconfig", "-n", "kube-system", name,
                                             "-o", "json"))
    return obj


def lab_up(name: str) -> str:
    """`lab up` with the module's settings; its progress lines (stderr), which name what it changed."""
    result = run_cli("lab", "up", "--name", name, *UP, timeout=UP_TIMEOUT)
    assert result.returncode == 0, result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def lab() -> Iterator[LabInfo]:
    name = unique_lab("kn")
    with lab_guard(name):
        out = lab_up(name)
        assert f"created CiliumNodeConfig kube-system/{OWN}" in out, out
        yield load_lab(name)


def test_the_overridden_node_alone_runs_its_own_setting(lab: LabInfo) -> None:
    crds = kubectl(lab, "get", "crd", "-o", "name").split()
    assert "customresourcedefinition.apiextensions.k8s.io/ciliumnodeconfigs.cilium.io" in crds
    spec = node_config(lab, OWN)["spec"]
    assert spec == {"nodeSelector": {"matchLabels": {"kubernetes.io/hostname": "node-2"}},
                    "defaults": {"encryption-engine": "userspace"}}
    nodes = node_entries(lab.name)
    assert nodes["node-2"]["engineReason"] == "encryption.engine=userspace", nodes["node-2"]
    assert SOURCE in nodes["node-2"]["configSources"]
    for other in ("node-1", "node-3"):
        assert nodes[other]["engineReason"].startswith("auto: "), nodes[other]
        assert nodes[other]["configSources"] == ["config-map:kube-system/cilium-config"]
    assert all(n["errors"] == [] and n["encryption"]["mode"] == "ipsec" for n in nodes.values()), nodes


def test_lab_up_again_with_the_same_sets_changes_nothing(lab: LabInfo) -> None:
    version = node_config(lab, OWN)["metadata"]["resourceVersion"]
    out = lab_up(lab.name)
    assert "CiliumNodeConfig" not in out and "was already up" in out, out
    assert node_config(lab, OWN)["metadata"]["resourceVersion"] == version


def _agent_pod(info: LabInfo, node: str) -> dict[str, Any]:
    pods = json.loads(kubectl(info, "get", "pods", "-n", "kube-system", "-l", "k8s-app=cilium", "-o", "json"))
    found: dict[str, Any] = next(p for p in pods["items"] if p["spec"]["nodeName"] == node)
    return found


def test_a_later_config_applies_at_the_next_start_and_a_refused_key_is_reported(lab: LabInfo) -> None:
    kubectl(lab, "create", "-f", "-", stdin=json.dumps(BAD))
    created = time.time()
    # Read at start only: an agent that applied its datapath since keeps what it started with.
    wait_until(lambda: (agent_status(lab, "node-3") or {}).get("lastApply", 0) > created + 1,
               60.0, "node-3's agent applying again after the new CiliumNodeConfig", interval=1.0)
    assert node_entries(lab.name)["node-3"]["engineReason"].startswith("auto: ")

    pod = _agent_pod(lab, "node-3")
    kubectl(lab, "delete", "pod", "-n", "kube-system", pod["metadata"]["name"], "--timeout=60s")

    def restarted() -> dict[str, Any] | None:
        live = agent_status(lab, "node-3") or {}
        if live.get("startedAt", 0) <= created or live.get("agent") != "ready":
            return None
        entry: dict[str, Any] = node_entries(lab.name)["node-3"]
        return entry

    entry = wait_until(restarted, 120.0, "node-3's agent started again and ready", interval=1.0,
                       detail=lambda: node_entries(lab.name)["node-3"])
    assert entry["engineReason"] == "encryption.engine=userspace", entry
    assert entry["encryption"]["mode"] == "ipsec"  # enable-wireguard refused: the cluster's IPsec stays
    assert "cilium-node-config:kube-system/zz-late" in entry["configSources"]
    refusal = ("CiliumNodeConfig kube-system/zz-late: enable-wireguard: set for the whole cluster, not per "
               "node (per node: encryption-engine); ignored")
    assert refusal in entry["errors"], entry["errors"]
    new_pod = _agent_pod(lab, "node-3")["metadata"]["name"]
    log = (lab.paths.logs / f"{new_pod}.log").read_text()
    assert f"ERROR ciphermesh.agent.node_config: {refusal}" in log
    # The other nodes never restarted: they keep the ConfigMap's engine.
    nodes = node_entries(lab.name)
    assert nodes["node-1"]["engineReason"].startswith("auto: ") and nodes["node-1"]["errors"] == []
