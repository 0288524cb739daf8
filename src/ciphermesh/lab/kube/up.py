"""`lab up --control-plane kubernetes` past the topology: the relay, the lab kubelet, its Nodes, and (with
encryption values) the seed's order: the Secret, then the chart."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping

from ciphermesh.agent.modes import agent_mode
from ciphermesh.config import Values
from ciphermesh.keys import generate_line
from ciphermesh.lab.info import LabError, LabInfo
from ciphermesh.lab.kube.control_plane import apiserver_port, kube_client, kube_store
from ciphermesh.lab.kube.install import install_chart
from ciphermesh.lab.kube.node_configs import ensure_node_configs
from ciphermesh.lab.kube.relay import ensure_relay, relay_pid
from ciphermesh.lab.processes import read_pidfile, start_daemon
from ciphermesh.store.base import Expect
from ciphermesh.store.errors import StoreError
from ciphermesh.store.kubernetes.apiserver import log_tail
from ciphermesh.store.kubernetes.objects import NODES

KUBELET = "kubelet"
RELAY_TIMEOUT = 30.0
Progress = Callable[[str], None]


def lab_argv(command: str, lab: str) -> list[str]:
    """`ciphermesh lab COMMAND --lab LAB` with this checkout's interpreter."""
    return [sys.executable, "-m", "ciphermesh", "lab", command, "--lab", lab]


def kubelet_pid(info: LabInfo) -> int | None:
    return read_pidfile(info.paths.pids / f"{KUBELET}.pid")


def kube_up(info: LabInfo, values: Values, progress: Progress, *, installed: bool, timeout: float,
            node_sets: Mapping[str, list[str]]) -> tuple[list[str], bool]:
    """Bring up (or back) what runs beside the control plane; what was (re)started and whether the chart
    is installed now. Without encryption values nothing is installed, as a Kind cluster comes up.
    `node_sets` become CiliumNodeConfigs before the chart starts any agent."""
    paths = info.paths
    restarted = []
    if relay_pid(paths) is None:
        progress("starting the apiserver relay into the node namespaces")
    if ensure_relay(paths, lab_argv("relay", info.name), info.namespaces, apiserver_port(paths),
                    RELAY_TIMEOUT):
        restarted.append("the apiserver relay")
    if kubelet_pid(info) is None:
        progress("starting the lab kubelet")
        start_daemon(lab_argv(KUBELET, info.name), pidfile=paths.pids / f"{KUBELET}.pid",
                     log=paths.logs / f"{KUBELET}.log", marker=paths.marker)
        restarted.append("the lab kubelet")
    wait_nodes(info, timeout)
    for change in ensure_node_configs(info, node_sets, timeout):
        progress(change)
    if installed or agent_mode(values) == "disabled":
        return restarted, installed
    if agent_mode(values) == "ipsec":
        _create_key_secret(info, values, progress)
    progress("installing ciphermesh (the chart) with the lab's values")
    install_chart(paths.kubeconfig, values)
    return restarted, True


def _create_key_secret(info: LabInfo, values: Values, progress: Progress) -> None:
    """The Secret the seed creates with `kubectl create secret generic`, through the API; kept if there."""
    name = values.text("encryption.ipsec.secretName")
    try:
        with kube_store(info.paths) as store:
            if store.get_key_secret(name=name) is None:
                line = generate_line()
                store.put_key_secret(line.format(reveal=True), name=name, expect=Expect.ABSENT)
                progress(f"created secret kube-system/{name} with key ID {line.key_id}")
    except StoreError as exc:
        raise LabError(f"lab {info.name}: secret kube-system/{name}: {exc}") from None


def registered_nodes(info: LabInfo) -> set[str]:
    """The names of the lab's `v1` Node objects."""
    api = kube_client(info.paths)
    try:
        return {str(item["metadata"]["name"]) for item in api.request("GET", NODES).get("items") or []}
    finally:
        api.close()


def wait_nodes(info: LabInfo, timeout: float) -> None:
    """Wait until the lab kubelet registered a Node per node namespace; LabError if it exits or is late."""
    log = info.paths.logs / f"{KUBELET}.log"
    deadline = time.monotonic() + timeout
    pid = kubelet_pid(info)
    while True:
        try:
            missing = set(info.nodes) - registered_nodes(info)
        except StoreError:
            missing = set(info.nodes)
        if not missing:
            return
        if kubelet_pid(info) != pid or pid is None:
            raise LabError(f"lab {info.name}: the lab kubelet (`ciphermesh lab kubelet --lab {info.name}`) "
                           f"exited: {log_tail(log)} (see {log})")
        if time.monotonic() > deadline:
            raise LabError(f"lab {info.name}: the lab kubelet registered no Node for "
                           f"{', '.join(sorted(missing))} within {timeout:.0f} s: {log_tail(log)} "
                           f"(see {log})")
        time.sleep(0.2)
