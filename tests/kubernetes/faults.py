"""What the Kubernetes fault tests read and do to a lab: kubectl as its admin, the agents' own status, the
Secret rotated to the next key ID, ghost nodes the agents see but no kubelet runs, the control plane's
processes killed and brought back by `lab up` with the lab's settings."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import time
from typing import Any

from ciphermesh.lab.cluster import agent_status
from ciphermesh.lab.info import LabInfo
from ciphermesh.lab.kube.control_plane import apiserver_pid
from ciphermesh.lab.kube.relay import relay_pid
from ciphermesh.lab.processes import pid_alive
from ciphermesh.store.etcd.client import EtcdClient
from ciphermesh.store.etcd.process import client_endpoint
from ciphermesh.store.kubernetes.objects import COMPONENT, PART_OF, micro_time, now
from ciphermesh.store.third_party import third_party_binary
from tests.support.lab import run_cli
from tests.support.wait import wait_until

NODES = 3
SETS = ("--set", "encryption.enabled=true", "--set", "encryption.type=ipsec")
SECRET = "cilium-ipsec-keys"
# The lab's deadlines grow with the machine's load: a repair restarts kube-apiserver (10-40 s when busy).
UP_TIMEOUT = 600.0


def kubectl(info: LabInfo, *args: str, stdin: str | None = None) -> str:
    """The pinned kubectl as the lab's admin; fails the test with its stderr."""
    argv = [str(third_party_binary("kubectl")), f"--kubeconfig={info.paths.kubeconfig}", *args]
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr.strip()}"
    return done.stdout


def kube_json(info: LabInfo, *args: str) -> Any:
    return json.loads(kubectl(info, "get", *args, "-o", "json"))


def lab_up_again(info: LabInfo) -> tuple[subprocess.CompletedProcess[str], float]:
    """`ciphermesh lab up` with the lab's settings (it restarts what is missing); its result and seconds."""
    start = time.monotonic()
    up = run_cli("lab", "up", "--lab", info.name, "--nodes", str(NODES), "--control-plane", "kubernetes",
                 *SETS, timeout=UP_TIMEOUT)
    return up, time.monotonic() - start


def kill(pid: int, what: str) -> None:
    """SIGKILL `pid` and wait until it is gone."""
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 30.0, f"{what} (pid {pid}) to die")


def kill_apiserver(info: LabInfo) -> None:
    pid = apiserver_pid(info.paths)
    assert pid is not None, "the lab's kube-apiserver is not running"
    kill(pid, "kube-apiserver")


def kill_relay(info: LabInfo) -> None:
    """Cut every node off the API server (the relay is their route to it) while the host still reaches it."""
    pid = relay_pid(info.paths)
    assert pid is not None, "the lab's apiserver relay is not running"
    kill(pid, "the apiserver relay")


def compact_etcd(info: LabInfo) -> int:
    """Compact the lab's etcd to its head: every revision before now is gone from the store."""
    with EtcdClient(client_endpoint(info.paths.root)) as raw:
        head = raw.put(b"/ciphermesh-tests/compact", b"x")
        raw.compact(head)
    return head


def statuses(info: LabInfo, nodes: tuple[str, ...] | None = None) -> dict[str, dict[str, Any] | None]:
    return {node: agent_status(info, node) for node in nodes or info.nodes}


def engine_peers(status: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The userspace engine's paths, by peer router IP."""
    if status is None:
        return {}
    engine = status["encryption"].get("engineStatus") or {}
    return {p["routerIP"]: p for p in engine.get("peers") or []}


def engine_errors(status: dict[str, Any] | None) -> dict[str, int]:
    assert status is not None
    errors: dict[str, int] = (status["encryption"].get("engineStatus") or {}).get("errors") or {}
    return dict(errors)


def sas_for(status: dict[str, Any] | None, router_ip: str) -> list[dict[str, Any]]:
    """The SAs an engine holds to or from `router_ip`."""
    assert status is not None
    sas = (status["encryption"].get("engineStatus") or {}).get("sas") or []
    return [sa for sa in sas if router_ip in (sa["src"], sa["dst"])]


def held_sas(status: dict[str, Any] | None, router_ip: str) -> set[tuple[str, str, str, int]]:
    """(direction, src, dst, SPI) of the SAs an engine holds to or from `router_ip`."""
    return {(sa["direction"], sa["src"], sa["dst"], sa["spi"]) for sa in sas_for(status, router_ip)}


def viewed_peers(status: dict[str, Any] | None) -> set[str]:
    """The peers in an agent's view: those it probes (they have a router IP) and those it waits for."""
    if status is None:
        return set()
    health = status["health"]
    probed = {p["node"] for p in health.get("peers") or []}
    return probed | {w.split(":", 1)[0] for w in status.get("waiting") or []}


def cilium_nodes(info: LabInfo) -> dict[str, dict[str, Any]]:
    return {n["metadata"]["name"]: n for n in kube_json(info, "ciliumnodes")["items"]}


def router_ips(info: LabInfo) -> dict[str, str]:
    return {name: next(a["ip"] for a in n["spec"]["addresses"] if a["type"] == "CiliumInternalIP")
            for name, n in cilium_nodes(info).items()}


def rotate_secret(info: LabInfo) -> int:
    """`kubectl patch secret` to the next key ID with a fresh PSK, as the seed does; the new key ID."""
    encoded = kubectl(info, "get", "secret", "-n", "kube-system", SECRET, "-o", "jsonpath={.data.keys}")
    key_id, algo, psk, size = base64.b64decode(encoded).decode().split()
    new_id = int(key_id.rstrip("+")) + 1
    new_psk = secrets.token_hex(len(psk) // 2)
    patch = json.dumps({"stringData": {"keys": f"{new_id}+ {algo} {new_psk} {size}"}})
    assert "patched" in kubectl(info, "patch", "secret", "-n", "kube-system", SECRET, "-p", patch)
    return new_id


def sending_with(info: LabInfo, key_id: int) -> bool:
    """Every agent sends to every peer with `key_id`: each has seen every peer's CiliumNode publish it."""
    peers = len(info.nodes) - 1
    for status in statuses(info).values():
        paths = engine_peers(status)
        if len(paths) != peers or any(p["outSPI"] != key_id for p in paths.values()):
            return False
    return True


def ghost(info: LabInfo, name: str, internal_ip: str) -> None:
    """A v1 Node (so the operator's GC keeps it), a live Lease and a CiliumNode without a router IP: each
    agent's view holds it as a peer it waits for; no kubelet runs anything on it."""
    kubectl(info, "create", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))
    kubectl(info, "create", "-f", "-", stdin=json.dumps({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": f"ciphermesh-{name}", "namespace": "kube-node-lease",
                     "labels": {PART_OF: "ciphermesh", COMPONENT: "agent"}},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 3600, "renewTime": micro_time(now())}}))
    kubectl(info, "create", "-f", "-", stdin=json.dumps({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNode", "metadata": {"name": name},
        "spec": {"addresses": [{"type": "InternalIP", "ip": internal_ip}], "bootid": f"{name}-boot"}}))


def remove_ghost(info: LabInfo, name: str) -> None:
    kubectl(info, "delete", "ciliumnode", name, "--ignore-not-found")
    kubectl(info, "delete", "lease", "-n", "kube-node-lease", f"ciphermesh-{name}", "--ignore-not-found")
    kubectl(info, "delete", "node", name, "--ignore-not-found")


def log_count(info: LabInfo, needle: str) -> dict[str, int]:
    """How often each agent pod's log says `needle`."""
    return {p.name: p.read_text(errors="replace").count(needle)
            for p in info.paths.logs.glob("cilium-*.log") if not p.name.startswith("cilium-operator")}
