"""The lab kubelet against a real kube-apiserver and real node namespaces: a DaemonSet labelled
part-of=ciphermesh runs a pod per node, in the node's netns, with its Secret, env, token and exactly
the granted capabilities; patches, restarts, template changes, node and workload deletion."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from ciphermesh.lab.processes import pid_alive, read_pidfile
from ciphermesh.store.kubernetes.client import KubeClient, KubeConfig
from tests.lab.kubelet.harness import KubeletLab, kubelet_lab
from tests.support.names import unique_lab
from tests.support.wait import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.slow]
NS = "kube-system"
# CAP_NET_ADMIN (12), CAP_NET_RAW (13), CAP_SYS_MODULE (16).
GRANTED = (1 << 12) | (1 << 13) | (1 << 16)
SCRIPT = r"""
while true; do
  {
    echo "arg=$1"
    echo "node=$K8S_NODE_NAME"
    echo "ip=$K8S_NODE_IP"
    echo "service=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"
    echo "key=$(cat /etc/test-keys/..data/keys)"
    echo "namespace=$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)"
    echo "netns=$(readlink /proc/self/ns/net)"
    grep '^Cap' /proc/self/status | tr -d '\t' | sed 's/:/=/'
  } > /var/run/probe/report.tmp
  mv /var/run/probe/report.tmp /var/run/probe/report
  sleep 0.2
done
"""


def field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def daemonset(annotation: str = "one") -> dict[str, Any]:
    labels = {"k8s-app": "probe", "app.kubernetes.io/part-of": "ciphermesh"}
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "probe", "namespace": NS, "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"k8s-app": "probe"}},
            "template": {
                "metadata": {"labels": labels, "annotations": {"revision": annotation}},
                "spec": {
                    "hostNetwork": True, "serviceAccountName": "probe", "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "probe", "image": "busybox",
                        "command": ["sh", "-c", SCRIPT, "sh", "$(K8S_NODE_NAME)"],
                        "env": [
                            field_env("K8S_NODE_NAME", "spec.nodeName"),
                            field_env("K8S_NODE_IP", "status.hostIP"),
                        ],
                        "securityContext": {"privileged": False, "capabilities": {
                            "add": ["NET_ADMIN", "NET_RAW", "SYS_MODULE"], "drop": ["ALL"]}},
                        "volumeMounts": [
                            {"name": "keys", "mountPath": "/etc/test-keys", "readOnly": True},
                            {"name": "probe", "mountPath": "/var/run/probe"},
                        ],
                    }],
                    "volumes": [
                        {"name": "keys", "secret": {"secretName": "test-keys", "defaultMode": 0o400}},
                        {"name": "probe",
                         "hostPath": {"path": "/var/run/probe", "type": "DirectoryOrCreate"}},
                    ],
                },
            },
        },
    }


def deployment() -> dict[str, Any]:
    labels = {"name": "op", "app.kubernetes.io/part-of": "ciphermesh"}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "op", "namespace": NS, "labels": labels},
        "spec": {
            "replicas": 2, "selector": {"matchLabels": {"name": "op"}},
            "template": {"metadata": {"labels": labels}, "spec": {
                "hostNetwork": True, "serviceAccountName": "probe", "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "op", "image": "busybox",
                                "command": ["sh", "-c", "exec sleep 3600"]}],
            }},
        },
    }


def operator_pods(lab: KubeletLab) -> list[dict[str, Any]]:
    return [p for p in lab.pods() if p["metadata"]["name"].startswith("op-")
            and (p.get("status") or {}).get("phase") == "Running"]


def report(lab: KubeletLab, node: str) -> dict[str, str]:
    try:
        text = (lab.node_root(node) / "var/run/probe/report").read_text()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def probe_pods(lab: KubeletLab) -> dict[str, dict[str, Any]]:
    """Running probe pods by node."""
    return {p["spec"]["nodeName"]: p for p in lab.pods()
            if p["metadata"]["name"].startswith("probe-")
            and (p.get("status") or {}).get("phase") == "Running"}


def container_pid(lab: KubeletLab, pod: dict[str, Any]) -> int | None:
    return read_pidfile(lab.root / "kubelet/pods" / pod["metadata"]["uid"] / "containers/probe.pid")


def restarts(lab: KubeletLab, node: str) -> int:
    return int(probe_pods(lab)[node]["status"]["containerStatuses"][0]["restartCount"])


def set_key(lab: KubeletLab, value: str) -> None:
    patch = json.dumps({"stringData": {"keys": value}})
    lab.cluster.kubectl("patch", "secret", "-n", NS, "test-keys", "-p", patch)


def lease_renewed(lab: KubeletLab, node: str) -> str:
    return str(lab.kubectl_json("get", "lease", "-n", "kube-node-lease", node)["spec"]["renewTime"])


def ready_nodes(lab: KubeletLab) -> dict[str, str]:
    """Ready Nodes and their InternalIP."""
    found = {}
    for node in lab.kubectl_json("get", "nodes")["items"]:
        conditions = {c["type"]: c["status"] for c in node["status"].get("conditions") or []}
        ips = [a["address"] for a in node["status"].get("addresses") or [] if a["type"] == "InternalIP"]
        if conditions.get("Ready") == "True":
            found[node["metadata"]["name"]] = ips[0]
    return found


def host_mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        return {line.split()[4] for line in mountinfo}


def check_pods_see_their_node(lab: KubeletLab) -> None:
    pods = probe_pods(lab)
    ds_uid = lab.kubectl_json("get", "daemonset", "-n", NS, "probe")["metadata"]["uid"]
    for plan_node in lab.plan.nodes:
        node, pod = plan_node.name, pods[plan_node.name]
        assert pod["status"]["podIP"] == str(plan_node.ip) == pod["status"]["hostIP"]
        assert pod["metadata"]["ownerReferences"][0]["uid"] == ds_uid
        assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ciphermesh"
        seen = report(lab, node)
        assert seen["arg"] == node and seen["node"] == node and seen["ip"] == str(plan_node.ip)
        assert seen["service"] == f"127.0.0.1:{lab.cluster.port}"
        assert seen["key"] == "key-1"
        assert seen["namespace"] == NS
        assert seen["netns"] == f"net:[{os.stat(f'/run/netns/{plan_node.netns}').st_ino}]"
        for field in ("CapPrm", "CapEff", "CapBnd"):
            assert int(seen[field], 16) == GRANTED, (field, seen)
        assert int(seen["CapInh"], 16) == 0 and int(seen["CapAmb"], 16) == 0
    # The mounts are the containers' own: the machine has neither the mount points nor the mounts.
    assert not Path("/etc/test-keys").exists()
    assert not {"/etc/test-keys", "/var/run/probe", "/run/probe"} & host_mount_points()


def check_volume_layout_and_token(lab: KubeletLab, pod: dict[str, Any]) -> Path:
    """The secret volume in the kubelet's layout (its directory returned); the token authenticates."""
    volumes = lab.root / "kubelet/pods" / pod["metadata"]["uid"] / "volumes"
    volume = volumes / "kubernetes.io~secret/keys"
    assert os.readlink(volume / "keys") == "..data/keys"
    assert os.readlink(volume / "..data").startswith("..2")
    assert (volume / "keys").stat().st_mode & 0o777 == 0o400
    projected = next((volumes / "kubernetes.io~projected").iterdir())
    token = (projected / "token").read_text()
    config = KubeConfig(server=lab.cluster.url, ca_file=str(projected / "ca.crt"), token=token)
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    review = KubeClient(config).request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body)
    assert review["status"]["userInfo"]["username"] == "system:serviceaccount:kube-system:probe"
    return volume


def check_patches_are_atomic(lab: KubeletLab, volume: Path, nodes: list[str]) -> None:
    """Patched Secrets reach every pod's file; a reader of the file never sees a gap or a mix."""
    torn: list[str] = []
    done = threading.Event()
    values = {f"key-{i}" for i in range(1, 7)}

    def read_forever() -> None:
        while not done.is_set():
            try:
                value = (volume / "keys").read_text()
            except OSError as exc:
                torn.append(repr(exc))
                continue
            if value not in values:
                torn.append(value)

    reader = threading.Thread(target=read_forever)
    reader.start()
    try:
        for i in range(2, 7):
            set_key(lab, f"key-{i}")
            wait_until(lambda i=i: all(report(lab, n).get("key") == f"key-{i}" for n in nodes), 20,
                       f"key-{i} in every pod's mounted file")
    finally:
        done.set()
        reader.join()
    assert not torn


def check_rolling_update(lab: KubeletLab, nodes: list[str]) -> None:
    """A changed template replaces the pods one node at a time: never two on a node, never none anywhere."""
    old = {p["metadata"]["uid"] for p in probe_pods(lab).values()}
    pods_dir = lab.root / "kubelet/pods"
    seen: list[tuple[int, int]] = []  # (live containers, most pods on one node)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            per_node: dict[str, int] = {}
            live = 0
            for state in pods_dir.glob("*/state.json"):
                try:
                    node = json.loads(state.read_text())["pod"]["spec"]["nodeName"]
                except (OSError, ValueError):
                    continue
                pid = read_pidfile(state.parent / "containers/probe.pid")
                if pid is not None:
                    live += 1
                    per_node[node] = per_node.get(node, 0) + 1
            seen.append((live, max(per_node.values(), default=0)))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        lab.apply(daemonset("two"))

        def replaced() -> bool:
            pods = probe_pods(lab)
            return len(pods) == len(nodes) and not {p["metadata"]["uid"] for p in pods.values()} & old

        wait_until(replaced, 90, "the pods replaced", detail=lab.kubelet_log)
    finally:
        done.set()
        sampler.join()
    assert min(live for live, _ in seen) >= len(nodes) - 1
    assert max(most for _, most in seen) == 1


def test_the_kubelet_runs_ciphermesh_workloads(tmp_path: Path) -> None:
    with kubelet_lab(tmp_path, unique_lab("kl"), nodes=2) as lab:
        nodes = [n.name for n in lab.plan.nodes]
        lab.cluster.kubectl("create", "serviceaccount", "-n", NS, "probe")
        lab.cluster.kubectl("create", "secret", "generic", "-n", NS, "test-keys", "--from-literal=keys=key-1")
        lab.start_kubelet()
        wait_until(lambda: ready_nodes(lab) == {n.name: str(n.ip) for n in lab.plan.nodes}, 60, "Ready Nodes",
                   detail=lab.kubelet_log)
        leases = {n: lease_renewed(lab, n) for n in nodes}

        lab.apply(daemonset())
        wait_until(lambda: set(probe_pods(lab)) == set(nodes) and all(report(lab, n) for n in nodes), 90,
                   "a probe pod running on every node", detail=lab.kubelet_log)
        check_pods_see_their_node(lab)

        # A Deployment's replicas spread over the nodes, named and owned as its controller would.
        lab.apply(deployment())
        ops = wait_until(lambda: len(p := operator_pods(lab)) == 2 and p, 60, "two operator pods",
                         detail=lab.kubelet_log)
        assert sorted(p["spec"]["nodeName"] for p in ops) == nodes
        template_hash = ops[0]["metadata"]["labels"]["pod-template-hash"]
        assert all(p["metadata"]["name"].startswith(f"op-{template_hash}-") for p in ops)
        assert {p["metadata"]["ownerReferences"][0]["kind"] for p in ops} == {"Deployment"}
        pods = probe_pods(lab)
        check_patches_are_atomic(lab, check_volume_layout_and_token(lab, pods[nodes[0]]), nodes)

        # A killed container is restarted (and counted).
        pid = container_pid(lab, pods[nodes[0]])
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        wait_until(lambda: (p := container_pid(lab, pods[nodes[0]])) is not None and p != pid, 30,
                   "the container restarted", detail=lab.kubelet_log)
        wait_until(lambda: restarts(lab, nodes[0]) == 1, 30, "restartCount 1")
        wait_until(lambda: all(lease_renewed(lab, n) != leases[n] for n in nodes), 40, "renewed Leases")

        # A Pod deleted through the API is stopped, and the DaemonSet gets a new one on that node.
        deleted = probe_pods(lab)[nodes[1]]
        deleted_pid = container_pid(lab, deleted)
        lab.cluster.kubectl("delete", "pod", "-n", NS, deleted["metadata"]["name"], "--timeout=60s")
        wait_until(lambda: nodes[1] in (p := probe_pods(lab)) and p[nodes[1]]["metadata"]["uid"]
                   != deleted["metadata"]["uid"], 30, "a new pod on the node", detail=lab.kubelet_log)
        assert deleted_pid is not None and not pid_alive(deleted_pid)

        # A kubelet that dies leaves its pods running; started again, it adopts them.
        pids = {n: container_pid(lab, p) for n, p in probe_pods(lab).items()}
        kubelet = read_pidfile(lab.pidfile)
        assert kubelet is not None
        os.kill(kubelet, signal.SIGKILL)
        wait_until(lambda: not pid_alive(kubelet), 10, "the kubelet gone")
        assert all(pid is not None and pid_alive(pid) for pid in pids.values())
        lab.start_kubelet()
        set_key(lab, "key-1")
        wait_until(lambda: all(report(lab, n).get("key") == "key-1" for n in nodes), 30,
                   "the adopted pods' volumes kept current", detail=lab.kubelet_log)
        assert {n: container_pid(lab, p) for n, p in probe_pods(lab).items()} == pids

        check_rolling_update(lab, nodes)
        assert all(not pid_alive(pid) for pid in pids.values() if pid is not None)

        # A deleted Node stops its pod and is not registered again.
        gone = nodes[1]
        gone_pid = container_pid(lab, probe_pods(lab)[gone])
        lab.cluster.kubectl("delete", "node", gone)
        wait_until(lambda: not any(p["spec"]["nodeName"] == gone for p in lab.pods()), 30,
                   "the deleted node's pod gone")
        assert gone_pid is not None and not pid_alive(gone_pid)
        renewed = lease_renewed(lab, nodes[0])
        wait_until(lambda: lease_renewed(lab, nodes[0]) != renewed, 40, "another round of heartbeats")
        assert gone not in {n["metadata"]["name"] for n in lab.kubectl_json("get", "nodes")["items"]}

        # A deleted workload stops its pods and deletes them.
        last = container_pid(lab, probe_pods(lab)[nodes[0]])
        lab.cluster.kubectl("delete", "daemonset", "-n", NS, "probe")
        lab.cluster.kubectl("delete", "deployment", "-n", NS, "op")
        wait_until(lambda: not lab.pods(), 30, "no pods left")
        assert last is not None and not pid_alive(last)
        assert not list((lab.root / "kubelet/pods").iterdir())
