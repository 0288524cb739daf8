"""`lab down`: stop everything a lab started and remove it, found by pid file, namespace and marker."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

from ciphermesh.lab import netns, topology
from ciphermesh.lab.cluster import Progress
from ciphermesh.lab.info import LabError
from ciphermesh.lab.kube.up import KUBELET
from ciphermesh.lab.processes import (
    LAB_MARKER,
    kill_netns_processes,
    kill_pids,
    marked_pids,
    process_name,
    stop_daemon,
)
from ciphermesh.lab.state import LabPaths
from ciphermesh.store.etcd.process import stop_etcd


def lab_down(name: str, progress: Progress) -> None:
    """Remove everything the lab made: processes (the lab kubelet and its pods, the relay, kube-apiserver,
    agents, operator), namespaces, etcd, state. Idempotent.

    LabError naming what still runs (or is left) if anything of the lab survived.
    """
    paths = LabPaths.of(name)
    pidfiles = sorted(paths.pids.glob("*.pid")) if paths.pids.exists() else []
    # The lab kubelet first, while the API server it reports to still runs: it stops its pods. Then the
    # rest all at once: each daemon takes a moment to shut down cleanly, and they do not wait for each other.
    first = [pidfile for pidfile in pidfiles if pidfile.name == f"{KUBELET}.pid"]
    for stage in (first, [pidfile for pidfile in pidfiles if pidfile not in first]):
        with ThreadPoolExecutor(max_workers=max(1, len(stage))) as pool:
            list(pool.map(stop_daemon, stage))
    for namespace in netns.lab_residue(name).namespaces:
        kill_netns_processes(namespace)
    # What the pid files no longer name (the state dir lost, a record overwritten): etcd, the operator,
    # kube-apiserver, the relay, the kubelet's pods.
    strays = marked_pids(paths.marker)
    if strays:
        progress(f"stopping {len(strays)} process(es) found by {LAB_MARKER}={paths.marker}")
        kill_pids(strays)
    removed = topology.teardown(name)
    if removed:
        progress(f"removed {len(removed)} namespaces")
    if paths.root.exists():
        stop_etcd(paths.root)
        shutil.rmtree(paths.root, ignore_errors=True)
        progress(f"removed {paths.root}")
    _check_gone(paths)


def _check_gone(paths: LabPaths) -> None:
    residue = netns.lab_residue(paths.name)
    pids = sorted(set(residue.pids) | set(marked_pids(paths.marker)))
    left = [f"pid {pid} ({process_name(pid)})" for pid in pids]
    left += [f"namespace {namespace}" for namespace in residue.namespaces]
    left += [str(paths.root)] if paths.root.exists() else []
    if left:
        raise LabError(f"lab {paths.name} is not down: still there: {', '.join(left)}")
