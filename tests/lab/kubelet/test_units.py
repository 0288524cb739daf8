"""The lab kubelet's pure parts: the atomic-writer layout, env and `$(VAR)` expansion, capabilities,
and the controllers' plan (one pod per node, rolling one at a time, no two pods on a slot)."""

from __future__ import annotations

import os
from pathlib import Path

from ciphermesh.lab.kubelet.atomic_writer import File, write_payload
from ciphermesh.lab.kubelet.container import capabilities, container_env, expand, setpriv_prefix
from ciphermesh.lab.kubelet.controller import PodView, plan
from ciphermesh.lab.kubelet.workloads import Workload
from ciphermesh.lab.processes import LAB_MARKER

NODES = ["node-1", "node-2", "node-3"]


def test_the_payload_is_swapped_through_data(tmp_path: Path) -> None:
    assert write_payload(tmp_path, {"keys": File(b"one", 0o400), "other": File(b"x", 0o400)})
    first = os.readlink(tmp_path / "..data")
    assert os.readlink(tmp_path / "keys") == "..data/keys"
    assert (tmp_path / "keys").read_bytes() == b"one"
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o400
    assert not write_payload(tmp_path, {"keys": File(b"one", 0o400), "other": File(b"x", 0o400)})
    assert write_payload(tmp_path, {"keys": File(b"two", 0o400)})
    second = os.readlink(tmp_path / "..data")
    assert second != first and not (tmp_path / first).exists()
    assert (tmp_path / "keys").read_bytes() == b"two"
    assert not (tmp_path / "other").is_symlink() and not (tmp_path / "..data_tmp").exists()


def test_references_expand_as_kubernetes_does() -> None:
    env = {"NODE": "node-1"}
    assert expand("--node=$(NODE)", env) == "--node=node-1"
    assert expand("$(MISSING) $$(NODE) $$", env) == "$(MISSING) $(NODE) $"


def test_env_resolves_fieldrefs_in_order() -> None:
    pod = {"metadata": {"name": "p", "namespace": "kube-system"}, "spec": {"nodeName": "node-2"},
           "status": {"hostIP": "172.18.0.3"}}
    container = {"env": [
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        {"name": "ADDR", "value": "$(IP):9962"},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]}
    env = container_env(pod, container, lambda kind, name: None, {LAB_MARKER: "/lab"})
    assert env["ADDR"] == "172.18.0.3:9962" and env["NS"] == "kube-system" and env["HOSTNAME"] == "node-2"


def test_capabilities_are_exactly_the_granted_ones() -> None:
    spec = {"securityContext": {"capabilities": {"add": ["NET_ADMIN", "CAP_NET_RAW"], "drop": ["ALL"]}}}
    assert capabilities(spec) == {"NET_ADMIN", "NET_RAW"}
    assert "CHOWN" in (capabilities({}) or set())
    assert capabilities({"securityContext": {"privileged": True}}) is None
    assert setpriv_prefix(frozenset({"NET_RAW", "NET_ADMIN"}), False) == [
        "setpriv", "--bounding-set=-all,+net_admin,+net_raw", "--inh-caps=-all", "--ambient-caps=-all"]


def ds(template: str = "a") -> Workload:
    return Workload("DaemonSet", "cilium", "ds-uid", {"metadata": {"annotations": {"t": template}}}, 1)


def view(key: int, node: str, template_hash: str, *, available: bool = True,
         terminating: bool = False) -> PodView:
    return PodView(key, "ds-uid", node, node, template_hash, available, terminating)


def test_a_daemonset_wants_a_pod_per_node() -> None:
    decided = plan({"ds-uid": ds()}, NODES, [view(1, "node-1", ds().template_hash)])
    assert decided.stop == [] and [slot.node for _, slot in decided.create] == ["node-2", "node-3"]


def test_a_template_change_rolls_one_pod_at_a_time() -> None:
    old = ds("a").template_hash
    new = ds("b")
    pods = [view(i, node, old) for i, node in enumerate(NODES)]
    assert plan({"ds-uid": new}, NODES, pods).stop == [0]
    # The first old pod is terminating: nothing else moves, and its slot waits until it is gone.
    pods[0] = view(0, "node-1", old, terminating=True)
    decided = plan({"ds-uid": new}, NODES, pods)
    assert decided.stop == [] and decided.create == []
    # Its replacement is up but not available yet: still nothing else moves.
    pods[0] = view(9, "node-1", new.template_hash, available=False)
    assert plan({"ds-uid": new}, NODES, pods).stop == []
    pods[0] = view(9, "node-1", new.template_hash)
    assert plan({"ds-uid": new}, NODES, pods).stop == [1]


def test_gone_workloads_and_nodes_stop_their_pods() -> None:
    pods = [view(i, node, ds().template_hash) for i, node in enumerate(NODES)]
    assert sorted(plan({}, NODES, pods).stop) == [0, 1, 2]
    assert plan({"ds-uid": ds()}, NODES[:2], pods).stop == [2]


def test_deployment_replicas_spread_over_nodes() -> None:
    operator = Workload("Deployment", "cilium-operator", "dep-uid", {}, 2)
    assert [slot.node for _, slot in plan({"dep-uid": operator}, NODES, []).create] == ["node-1", "node-2"]
