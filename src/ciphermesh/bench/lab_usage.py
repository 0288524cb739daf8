"""What a lab's processes cost: CPU time and resident memory of each daemon with its descendants, found in
either control-plane mode (the etcd mode's pid files, or the lab kubelet's pod records on Kubernetes)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ciphermesh.bench.lab_measure import CLOCK_TICKS
from ciphermesh.lab.cluster import agent_pid
from ciphermesh.lab.info import KUBERNETES, LabInfo
from ciphermesh.lab.kube.control_plane import apiserver_pid
from ciphermesh.lab.kube.relay import relay_pid
from ciphermesh.lab.kube.up import kubelet_pid
from ciphermesh.lab.kubelet.podstate import PodStore
from ciphermesh.lab.processes import read_pidfile
from ciphermesh.store.etcd.process import running_etcd

AGENT_CONTAINER = "cilium-agent"
OPERATOR_CONTAINER = "cilium-operator"


def _pod_pids(info: LabInfo, container: str) -> dict[str, int]:
    """Pod name -> pid of `container` in the pods the lab kubelet runs (its `<lab>/kubelet/pods/`)."""
    pods = PodStore(info.paths.root / "kubelet" / "pods")
    found = {}
    for record in pods.load_all():
        pid = read_pidfile(pods.pidfile(record.uid, container))
        if pid is not None:
            found[f"{record.node}/{record.name}"] = pid
    return found


def agent_pids(info: LabInfo) -> dict[str, int]:
    """Node -> pid of its running agent."""
    if info.control_plane == KUBERNETES:
        return {key.split("/", 1)[0]: pid for key, pid in _pod_pids(info, AGENT_CONTAINER).items()}
    return {node: pid for node in info.nodes if (pid := agent_pid(info, node)) is not None}


def daemon_pids(info: LabInfo) -> dict[str, list[int]]:
    """The lab's other daemons by role: the price of its control-plane mode beside the agents."""
    paths = info.paths
    etcd = running_etcd(paths.root)
    roles: dict[str, list[int | None]] = {"etcd": [etcd.pid if etcd else None]}
    if info.control_plane == KUBERNETES:
        roles |= {"kubeApiserver": [apiserver_pid(paths)], "kubelet": [kubelet_pid(info)],
                  "relay": [relay_pid(paths)], "operator": list(_pod_pids(info, OPERATOR_CONTAINER).values())}
    else:
        roles["operator"] = [read_pidfile(paths.pids / "operator.pid")]
    return {role: [pid for pid in pids if pid is not None] for role, pids in roles.items()}


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _children() -> dict[int, list[int]]:
    """Parent pid -> its live children's pids, from one pass over /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def _tree(pid: int, children: Mapping[int, list[int]], others: frozenset[int]) -> list[int]:
    """`pid` and its descendants, but not the subtrees of `others` (the lab kubelet is its pods' parent)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(child for child in children.get(current, ()) if child not in others)
    return found


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class Usage:
    """CPU seconds used so far and resident bytes now, of a process and its descendants."""

    cpu_seconds: float
    rss_bytes: int


def usage(pids: list[int], children: Mapping[int, list[int]] | None = None,
          others: frozenset[int] = frozenset()) -> Usage:
    """The sum over `pids` and their live descendants (those in `others` and below excluded); reaped
    children count through cutime and cstime."""
    tree = _children() if children is None else children
    ticks, rss = 0, 0
    for root in pids:
        for pid in _tree(root, tree, others):
            fields = _stat_fields(pid)
            if fields is None:
                continue
            ticks += sum(int(fields[index]) for index in (11, 12, 13, 14))
            rss += _rss_bytes(pid)
    return Usage(ticks / CLOCK_TICKS, rss)


def usages(groups: Mapping[str, list[int]]) -> dict[str, Usage]:
    """`usage` of each group, from one look at the process tree; no process counts in two groups."""
    tree = _children()
    roots = frozenset(pid for pids in groups.values() for pid in pids)
    return {name: usage(pids, tree, roots - set(pids)) for name, pids in groups.items()}
