"""The lab's pods: create them on a node, run a command in them, list and delete them."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from ciphermesh.lab import netns
from ciphermesh.lab.cluster import pod_cidr_of
from ciphermesh.lab.info import LabError, LabInfo
from ciphermesh.lab.names import check_pod_name, pod_netns
from ciphermesh.lab.pods import PodError, create_pod, delete_pod
from ciphermesh.lab.processes import read_pidfile, start_daemon, stop_daemon
from ciphermesh.lab.state import write_private


@dataclass(frozen=True)
class PodRecord:
    """A pod as `lab pod list` shows it."""

    name: str
    node: str
    ip: str
    netns: str
    command: tuple[str, ...]

    def state(self, info: LabInfo) -> str:
        if not netns.exists(self.netns):
            return "missing"
        if self.command:
            return "running" if read_pidfile(info.paths.pod_dir() / f"{self.name}.pid") else "exited"
        return "ready"

    def as_dict(self, info: LabInfo) -> dict[str, Any]:
        return {"name": self.name, "node": self.node, "ip": self.ip, "netns": self.netns,
                "command": list(self.command), "state": self.state(info)}


def _record_path(info: LabInfo, name: str) -> Any:
    return info.paths.pod_dir() / f"{name}.json"


def get_pod(info: LabInfo, name: str) -> PodRecord:
    try:
        raw = json.loads(_record_path(info, name).read_text())
    except (OSError, ValueError):
        raise LabError(f"lab {info.name} has no pod {name!r}") from None
    return PodRecord(raw["name"], raw["node"], raw["ip"], raw["netns"], tuple(raw["command"]))


def list_pod_records(info: LabInfo) -> list[PodRecord]:
    directory = info.paths.pod_dir()
    names = sorted(p.stem for p in directory.glob("*.json")) if directory.exists() else []
    return [get_pod(info, name) for name in names]


def run_pod(info: LabInfo, name: str, node: str, command: Sequence[str] = (),
            ip: IPv4Address | None = None) -> PodRecord:
    """Create pod `name` on `node` and, if given, start `command` inside it (it keeps running)."""
    try:
        check_pod_name(name)
    except ValueError as exc:
        raise LabError(str(exc)) from None
    if _record_path(info, name).exists():
        raise LabError(f"pod {name} already exists in lab {info.name}")
    if command:
        _check_runnable(name, command[0])
    node_ns = info.netns_of(node)
    pod_cidr, mtu = pod_cidr_of(info, node)
    try:
        pod = create_pod(info.name, name, node_netns=node_ns, pod_cidr=pod_cidr, mtu=mtu, ip=ip)
    except (PodError, ValueError) as exc:
        raise LabError(f"pod {name}: {exc}") from None
    record = PodRecord(name, node, str(pod.ip), pod.netns, tuple(command))
    write_private(_record_path(info, name), json.dumps(record.as_dict(info) | {"state": None}) + "\n")
    if command:
        start_daemon(list(command), pidfile=info.paths.pod_dir() / f"{name}.pid",
                     log=info.paths.pod_dir() / f"{name}.log", netns=pod.netns)
    return record


def _check_runnable(pod: str, program: str) -> None:
    """Refuse a command that cannot be started, before the pod exists: it runs detached, its exec unseen."""
    # `ip netns exec` runs it with this PATH and this filesystem, so this lookup is the one it makes.
    if shutil.which(program) is None:
        why = "not an executable file" if os.path.exists(program) else "no such file, nor a command on PATH"
        raise LabError(f"pod {pod} not created: its command {program!r} cannot be run ({why})")


def delete_pod_record(info: LabInfo, name: str) -> None:
    record = get_pod(info, name)
    stop_daemon(info.paths.pod_dir() / f"{name}.pid")
    delete_pod(info.name, name, node_netns=info.netns_of(record.node))
    for suffix in (".json", ".log"):
        (info.paths.pod_dir() / f"{name}{suffix}").unlink(missing_ok=True)


def pod_command(info: LabInfo, name: str, command: Sequence[str]) -> list[str]:
    """The argv that runs `command` inside the pod (for exec, so the exit status passes through)."""
    record = get_pod(info, name)
    if not netns.exists(record.netns):
        raise LabError(f"pod {name}: its namespace {record.netns} is gone")
    return netns.command(pod_netns(info.name, name), list(command))
