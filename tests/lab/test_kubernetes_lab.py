"""`lab up --control-plane kubernetes --nodes 2` with no encryption values: a real kube-apiserver over the
lab's etcd, reached with the admin kubeconfig from the host and from inside every node namespace (the
relay), `lab env` for kubectl, the key commands through the API, repair of a killed kube-apiserver and
relay, and a `lab down` that leaves nothing.

The Nodes come from the lab kubelet (`ciphermesh lab kubelet`), built apart: where this tree does not have
it yet, `lab up` must get as far as starting it and say that it exited; where it has it, `lab up` succeeds
and `kubectl get nodes` lists both nodes. The tests share one lab, in this order; the last one removes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from ciphermesh.lab.cluster import load_lab
from ciphermesh.lab.info import LabInfo
from ciphermesh.lab.kube.control_plane import apiserver_pid, apiserver_port
from ciphermesh.lab.kube.relay import relay_pid
from ciphermesh.lab.processes import pid_alive
from ciphermesh.store.third_party import third_party_binary
from tests.support.lab import error_line, lab_guard, lab_pids, processes_naming, run_cli
from tests.support.names import unique_lab
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.timeout(400),
]

UP = ("--nodes", "2", "--control-plane", "kubernetes")
UP_TIMEOUT = 360.0
PSK = "a" * 40  # a valid 160-bit key for the seed's `kubectl create secret` line; the test lab's own


@cache
def kubelet_merged() -> bool:
    """Whether this tree has `ciphermesh lab kubelet` (built apart, merged later)."""
    return run_cli("lab", "kubelet", "--help").returncode == 0


def lab_up(name: str) -> None:
    """`lab up` as the tests run it; where the lab kubelet is missing it must fail on that alone."""
    result = run_cli("lab", "up", "--name", name, *UP, timeout=UP_TIMEOUT)
    if kubelet_merged():
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"lab {name} is up: 2 nodes on "), result.stdout
        assert "on Kubernetes, nothing installed" in result.stdout, result.stdout
    else:
        line = error_line(result, alone=False)
        assert f"the lab kubelet (`ciphermesh lab kubelet --lab {name}`) exited" in line, line


def kubectl(info: LabInfo, *args: str, namespace: str | None = None) -> str:
    """The pinned kubectl with the lab's admin kubeconfig, on the host or inside a node namespace."""
    argv = [str(third_party_binary("kubectl")), f"--kubeconfig={info.paths.kubeconfig}", *args]
    if namespace is not None:
        argv = ["ip", "netns", "exec", namespace, *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, f"kubectl {' '.join(args)} in {namespace or 'the host'}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def lab() -> Iterator[LabInfo]:
    name = unique_lab("kl")
    with lab_guard(name):
        lab_up(name)
        yield load_lab(name)


def test_the_control_plane_runs_from_the_lab_dir_with_private_credentials(lab: LabInfo) -> None:
    manifest = json.loads(lab.paths.manifest.read_text())
    assert manifest["controlPlane"] == "kubernetes"
    assert manifest["kubeconfig"] == str(lab.paths.kubeconfig)
    assert manifest["store"] == f"kubernetes://{lab.paths.kubeconfig}"
    assert kubectl(lab, "get", "--raw", "/readyz") == "ok"
    assert lab.paths.kubeconfig.stat().st_mode & 0o777 == 0o600
    assert lab.paths.kube_pki.stat().st_mode & 0o777 == 0o700
    files = list(lab.paths.kube_pki.iterdir())
    assert {"ca.crt", "ca.key", "sa.key", "apiserver.key"} <= {f.name for f in files}
    assert all(f.stat().st_mode & 0o077 == 0 for f in files), files
    pid = apiserver_pid(lab.paths)
    assert pid is not None
    # Found by `lab down` even without its pid file, as every lab daemon is.
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"CIPHERMESH_LAB={lab.paths.marker}".encode() in environ


def test_every_node_namespace_reaches_the_api_server_at_the_same_address(lab: LabInfo) -> None:
    for namespace in lab.namespaces:
        assert "namespace/kube-system" in kubectl(lab, "get", "ns", "-o", "name", namespace=namespace)
    inside = run_cli("lab", "exec", "--name", lab.name, "node-1", "--", str(third_party_binary("kubectl")),
                     f"--kubeconfig={lab.paths.kubeconfig}", "get", "--raw", "/readyz")
    assert inside.returncode == 0 and inside.stdout == "ok", inside.stderr
    if kubelet_merged():
        assert kubectl(lab, "get", "nodes", "-o", "name").split() == ["node/node-1", "node/node-2"]


def test_lab_env_puts_the_pinned_kubectl_and_helm_on_path_for_this_lab(lab: LabInfo) -> None:
    script = (f'eval "$({sys.executable} -m ciphermesh lab env --lab {lab.name})" && command -v kubectl '
              '&& command -v helm && echo "$KUBECONFIG" && kubectl version -o json')
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    kubectl_path, helm_path, kubeconfig, version = done.stdout.split("\n", 3)
    assert kubectl_path == str(lab.paths.kube_bin / "kubectl")
    assert helm_path == str(lab.paths.kube_bin / "helm")
    assert kubeconfig == str(lab.paths.kubeconfig)
    versions = json.loads(version)
    assert versions["serverVersion"]["gitVersion"] == versions["clientVersion"]["gitVersion"], versions


def test_the_key_commands_work_on_the_secret_through_the_api(lab: LabInfo) -> None:
    # Nothing installed: status says so instead of listing absent agents.
    assert "ciphermesh is not installed" in error_line(run_cli("status", "--lab", lab.name))
    kubectl(lab, "create", "-n", "kube-system", "secret", "generic", "cilium-ipsec-keys",
            f"--from-literal=keys=3+ rfc4106(gcm(aes)) {PSK} 128")
    show = run_cli("encryption", "key", "show", "--lab", lab.name)
    assert show.returncode == 0 and show.stdout == "3+ rfc4106(gcm(aes)) <redacted> 128\n", show.stderr
    rotated = run_cli("encryption", "key", "rotate", "--lab", lab.name)
    assert rotated.returncode == 0 and "new key SPI: 4" in rotated.stdout, rotated.stderr
    keys = kubectl(lab, "get", "secret", "-n", "kube-system", "cilium-ipsec-keys", "-o",
                   "go-template={{.data.keys | base64decode}}")
    assert keys.startswith("4+ rfc4106(gcm(aes)) ") and PSK not in keys


def test_the_commands_follow_the_values_of_the_installed_release(lab: LabInfo) -> None:
    # The seed's order: the cluster, then `ciphermesh install`; here with another secret name, which the
    # key commands must then use (the lab's own values file says nothing of it).
    sets = ["--set", "encryption.enabled=true,encryption.type=ipsec,encryption.ipsec.secretName=other-keys"]
    installed = run_cli("install", f"--kubeconfig={lab.paths.kubeconfig}", *sets, timeout=300)
    assert installed.returncode == 0, installed.stderr
    try:
        assert "cilium" in kubectl(lab, "get", "daemonset", "-n", "kube-system", "-o", "name")
        line = error_line(run_cli("encryption", "key", "show", "--lab", lab.name))
        assert "no secret kube-system/other-keys" in line, line
    finally:
        removed = run_cli("uninstall", f"--kubeconfig={lab.paths.kubeconfig}", timeout=300)
        assert removed.returncode == 0, removed.stderr
    assert run_cli("encryption", "key", "show", "--lab", lab.name).returncode == 0


def test_lab_up_brings_back_a_killed_api_server_and_relay_keeping_the_data(lab: LabInfo) -> None:
    port = apiserver_port(lab.paths)
    killed = [apiserver_pid(lab.paths), relay_pid(lab.paths)]
    assert None not in killed
    for pid in killed:
        os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
    wait_until(lambda: not any(pid_alive(pid) for pid in killed if pid), 5.0, "kube-apiserver and relay dead")
    line = error_line(run_cli("encryption", "key", "show", "--lab", lab.name))
    assert "its kube-apiserver is not running" in line and "--control-plane kubernetes" in line, line

    refused = error_line(run_cli("lab", "up", "--name", lab.name, "--nodes", "2", "--control-plane", "etcd"))
    assert "already up on the kubernetes control plane" in refused, refused
    assert apiserver_pid(lab.paths) is None

    lab_up(lab.name)
    assert apiserver_pid(lab.paths) not in (None, *killed) and relay_pid(lab.paths) not in (None, *killed)
    assert apiserver_port(lab.paths) == port
    for namespace in (None, *lab.namespaces):
        assert "cilium-ipsec-keys" in kubectl(lab, "get", "secret", "-n", "kube-system", namespace=namespace)
    show = run_cli("encryption", "key", "show", "--lab", lab.name)
    assert show.returncode == 0 and show.stdout.startswith("4+ "), show.stderr


def test_lab_down_removes_everything_and_may_run_again(lab: LabInfo) -> None:
    pids = lab_pids(lab.name)
    daemons = {apiserver_pid(lab.paths), relay_pid(lab.paths)}
    assert None not in daemons and daemons <= pids
    for _ in range(2):
        down = run_cli("lab", "down", "--name", lab.name)
        assert down.returncode == 0 and down.stdout == f"lab {lab.name} is down\n", down.stderr
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), 5.0, f"processes {sorted(pids)} end")
    assert not lab.paths.root.exists()
    assert not processes_naming(lab.paths.root)
