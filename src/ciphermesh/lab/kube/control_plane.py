"""A lab's Kubernetes control plane: kube-apiserver (the pinned build) as a lab daemon over the lab's etcd.

Files under `<lab>/kube/`: `pki/` (0700; the admin's client cert is in `system:masters`), `admin.kubeconfig`
(0600, `https://127.0.0.1:<port>`), `bin/` (the pinned kubectl and helm, for `lab env`). The pid file is
`<lab>/pids/kube-apiserver.pid`, the log `<lab>/logs/kube-apiserver.log`. Authorization is RBAC alone:
the chart's workloads get least-privilege roles, and the lab kubelet uses the admin credentials (it plays
the kubelet for ciphermesh's workloads only), so the Node authorizer would restrict nobody here.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from ciphermesh.lab.info import LabError, kubernetes_store
from ciphermesh.lab.processes import read_pidfile, start_daemon
from ciphermesh.lab.state import LabPaths
from ciphermesh.store.errors import StoreError
from ciphermesh.store.etcd.process import ETCD_BINARY
from ciphermesh.store.kubernetes.apiserver import (
    ADMIN,
    admin_ssl_context,
    apiserver_args,
    ensure_pki,
    free_port,
    log_tail,
    readyz,
    write_kubeconfig,
)
from ciphermesh.store.kubernetes.client import KubeClient, KubeConfig
from ciphermesh.store.open import open_store
from ciphermesh.store.store import Store
from ciphermesh.store.third_party import third_party_binary

APISERVER = "kube-apiserver"
# A first start on a busy 2-core machine takes 10-40 s (post-start hooks, the system namespaces); a
# repair also has every node's agents re-listing at once: so the deadline grows with the nodes.
APISERVER_TIMEOUT_BASE = 120.0
APISERVER_TIMEOUT_PER_NODE = 3.0
TOOLS = ("kubectl", "helm")


def apiserver_timeout(nodes: int) -> float:
    return APISERVER_TIMEOUT_BASE + APISERVER_TIMEOUT_PER_NODE * nodes


def apiserver_pid(paths: LabPaths) -> int | None:
    return read_pidfile(paths.pids / f"{APISERVER}.pid")


def apiserver_url(paths: LabPaths) -> str | None:
    """The URL the lab's admin kubeconfig names (the lab keeps its port), None before the first start."""
    try:
        return KubeConfig.from_file(paths.kubeconfig).server
    except StoreError:
        return None


def apiserver_port(paths: LabPaths) -> int:
    url = apiserver_url(paths)
    if url is None:
        raise LabError(f"lab {paths.name}: {paths.kubeconfig} is missing or unreadable; `ciphermesh lab "
                       f"up --name {paths.name} --control-plane kubernetes` with the same settings writes it "
                       "again")
    return int(url.rsplit(":", 1)[1])


def ensure_apiserver(paths: LabPaths, etcd_url: str, timeout: float) -> bool:
    """Start the lab's kube-apiserver unless it runs, and wait until it is ready; True if it was started.

    It keeps its port across restarts: the kubeconfig (on the host and in the nodes) names it.
    """
    started = False
    pid = apiserver_pid(paths)
    if pid is None:
        paths.kube_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        pki = ensure_pki(paths.kube_pki)
        url = apiserver_url(paths) or f"https://127.0.0.1:{free_port()}"
        port = int(url.rsplit(":", 1)[1])
        write_kubeconfig(paths.kubeconfig, url, pki, ADMIN)
        pid = start_daemon(apiserver_args(pki, etcd_url, port), pidfile=paths.pids / f"{APISERVER}.pid",
                           log=paths.logs / f"{APISERVER}.log", marker=paths.marker, umask=0o077)
        started = True
    link_tools(paths)
    _wait_ready(paths, pid, timeout)
    return started


def _wait_ready(paths: LabPaths, pid: int, timeout: float) -> None:
    """Poll /readyz until 200; LabError with its last log line if it exits, naming its log if late."""
    context = admin_ssl_context(ensure_pki(paths.kube_pki))
    url = apiserver_url(paths)
    assert url is not None  # written before the process was started
    log = paths.logs / f"{APISERVER}.log"
    deadline = time.monotonic() + timeout
    while not readyz(url, context):
        if read_pidfile(paths.pids / f"{APISERVER}.pid") != pid:
            raise LabError(f"lab {paths.name}: kube-apiserver exited while starting: {log_tail(log)}")
        if time.monotonic() > deadline:
            raise LabError(f"lab {paths.name}: kube-apiserver was not ready within {timeout:.0f} s "
                           f"(see {log})")
        time.sleep(0.2)


def link_tools(paths: LabPaths) -> Path:
    """`<lab>/kube/bin` with the pinned kubectl and helm linked in: a PATH entry that adds nothing else."""
    paths.kube_bin.mkdir(mode=0o700, parents=True, exist_ok=True)
    for tool in TOOLS:
        try:
            target = third_party_binary(tool)
        except StoreError as exc:
            raise LabError(str(exc)) from None
        link = paths.kube_bin / tool
        if not link.is_symlink() or link.readlink() != target:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to(target)
    return paths.kube_bin


def require_apiserver(paths: LabPaths) -> None:
    """LabError saying how to bring the lab's kube-apiserver back, if it does not run."""
    if apiserver_pid(paths) is None:
        raise LabError(f"lab {paths.name}: its kube-apiserver is not running; `ciphermesh lab up --name "
                       f"{paths.name} --control-plane kubernetes` with the same settings restarts it, "
                       "keeping the lab's data")


def kube_client(paths: LabPaths, timeout: float = 5.0) -> KubeClient:
    """A client of the lab's API server as its admin."""
    return KubeClient(KubeConfig.from_file(paths.kubeconfig), timeout=timeout)


def kube_store(paths: LabPaths) -> Store:
    """The lab's store on its API server, through the admin kubeconfig."""
    require_apiserver(paths)
    return open_store(kubernetes_store(paths), paths.name)


def etcd_binary(control_plane: str) -> str:
    """The etcd a lab runs: the pinned build under kube-apiserver (it needs etcd 3.5+), else Debian's."""
    if control_plane != "kubernetes":
        return ETCD_BINARY
    try:
        return str(third_party_binary("etcd"))
    except StoreError as exc:
        raise LabError(str(exc)) from None
