"""A whole cluster on this machine: its control plane (etcd, or etcd and kube-apiserver), the topology,
and in the etcd mode the operator and one agent per node (the chart runs them on Kubernetes); lab up."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import yaml

from ciphermesh.agent.modes import UnsupportedModeError, agent_mode
from ciphermesh.agent.status_socket import query_status
from ciphermesh.config import MASK_KEY, POOL_KEY, Values
from ciphermesh.keys import generate_line
from ciphermesh.lab import netns, pace, topology
from ciphermesh.lab.info import CONTROL_PLANES, ETCD, KUBERNETES, LabError, LabInfo, kubernetes_store
from ciphermesh.lab.kube.control_plane import (
    apiserver_pid,
    apiserver_timeout,
    ensure_apiserver,
    etcd_binary,
    kube_store,
    require_apiserver,
)
from ciphermesh.lab.kube.release import release_values
from ciphermesh.lab.kube.up import kube_up
from ciphermesh.lab.node_values import node_values_file, parse_node_sets, write_node_values
from ciphermesh.lab.processes import LAB_MARKER, marked_pids, read_pidfile, start_daemon
from ciphermesh.lab.recovery import recover_manifest
from ciphermesh.lab.repair import existing_lab
from ciphermesh.lab.state import LabPaths, write_private
from ciphermesh.operator.ipam import ClusterPool, IPAMConfigError
from ciphermesh.store.base import Expect
from ciphermesh.store.etcd.process import DEFAULT_START_TIMEOUT, running_etcd, start_etcd
from ciphermesh.store.open import open_store
from ciphermesh.store.store import Store

MAX_NODES = 64
# `lab up`'s control plane when none is asked for; `kubernetes` once the whole flow on it holds.
DEFAULT_CONTROL_PLANE = KUBERNETES
"""`lab up`'s control plane; the Python `lab_up` keeps etcd, for tests and benches that drive agents."""
READY_TIMEOUT_BASE = 45.0
READY_TIMEOUT_PER_NODE = 3.0
Progress = Callable[[str], None]


def store_endpoint(paths: LabPaths) -> str:
    info = running_etcd(paths.root)
    if info is None:
        raise LabError(f"lab {paths.name}: its etcd is not running; `ciphermesh lab up --name {paths.name}` "
                       "with the same settings restarts it, keeping the lab's data")
    return info.client_url


def load_lab(name: str) -> LabInfo:
    """The running lab called `name`, or LabError saying there is none or what of it is missing."""
    paths = LabPaths.of(name)
    manifest = paths.read_manifest()
    if manifest is None:
        manifest = _recovered_manifest(paths)
    return LabInfo(
        name=name,
        nodes=tuple(manifest["nodes"]),
        node_ips=dict(manifest["nodeIPs"]),
        subnet=manifest["subnet"],
        store=manifest["store"],
        paths=paths,
        control_plane=manifest.get("controlPlane", ETCD),
    )


def _recovered_manifest(paths: LabPaths) -> dict[str, Any]:
    """`lab.json` rebuilt from the lab's namespaces (and written again), or LabError saying what is lost."""
    name = paths.name
    manifest = recover_manifest(paths)
    if manifest is None:
        if netns.lab_residue(name) or marked_pids(paths.marker):
            raise LabError(f"lab {name} is not up but left things behind; "
                           f"`ciphermesh lab down --name {name}` removes them")
        raise LabError(f"no lab named {name!r} is up (start one with `ciphermesh lab up --name {name}`)")
    if not paths.root.is_dir():
        raise LabError(f"lab {name}: its state directory {paths.root} is gone (with its etcd data) while its "
                       f"namespaces remain; `ciphermesh lab down --name {name}` removes the rest")
    if not paths.values.exists():
        raise LabError(f"lab {name}: {paths.manifest} and {paths.values} are lost; `ciphermesh lab up --name "
                       f"{name} --nodes {len(manifest['nodes'])}` with the settings it was started with "
                       "writes them again")
    paths.write_manifest(manifest)
    return manifest


def connect(info: LabInfo) -> Store:
    """The lab's store: its etcd, or on Kubernetes its API server (as the admin)."""
    if info.control_plane == KUBERNETES:
        return kube_store(info.paths)
    return open_store(store_endpoint(info.paths), info.name)


def running_values(info: LabInfo) -> Values:
    """The values the lab's agents run with: the lab's own, or on Kubernetes those of the installed chart
    (it may have been installed after `lab up`, as the seed does)."""
    if info.control_plane == KUBERNETES:
        require_apiserver(info.paths)
        installed = release_values(info.paths)
        if installed is not None:
            return installed
    return info.values()


def _daemon_argv(command: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "ciphermesh", command, *args]


def _check_pool(values: Values) -> None:
    """Refuse a pool the operator would refuse, before anything is built (it would exit, nodes would wait)."""
    try:
        ClusterPool.parse([str(c) for c in values.cidrs(POOL_KEY)], values.number(MASK_KEY))
    except IPAMConfigError as exc:
        raise LabError(str(exc)) from None


def _underlay_subnet(values: Values) -> IPv4Network:
    """A node network free on this machine and outside the pod pool, chosen before anything is built."""
    try:
        return topology.choose_subnet(topology.host_networks(), pod_pool=values.cidrs(POOL_KEY))
    except topology.TopologyError as exc:
        raise LabError(str(exc)) from None


def lab_up(name: str, nodes: int, values: Values, progress: Progress, *,
           control_plane: str = ETCD, node_sets: Iterable[str] = ()) -> LabInfo:
    """Build the lab, or bring back what is missing of it (same settings, data kept), and wait until every
    agent is ready and every node reaches every other (on Kubernetes without encryption values: until its
    Nodes are registered, nothing installed). `node_sets`: NODE:KEY=VALUE settings of single nodes."""
    if not 1 <= nodes <= MAX_NODES:
        raise LabError(f"--nodes {nodes}: a lab has 1 to {MAX_NODES} nodes")
    if control_plane not in CONTROL_PLANES:
        raise LabError(f"--control-plane {control_plane}: choose {' or '.join(CONTROL_PLANES)}")
    try:
        mode = agent_mode(values)
    except UnsupportedModeError as exc:
        raise LabError(str(exc)) from None
    _check_pool(values)
    paths = LabPaths.of(name)
    existing = existing_lab(paths, values, nodes, control_plane)
    subnet = IPv4Network(existing["subnet"]) if existing else _underlay_subnet(values)
    restarted: list[str] = []
    paths.create()
    write_private(paths.values, yaml.safe_dump(values.as_tree(), sort_keys=False))
    kubernetes = control_plane == KUBERNETES
    etcd = running_etcd(paths.root)
    if etcd is None:
        progress("starting etcd")
        etcd = start_etcd(paths.root, binary=etcd_binary(control_plane), env={LAB_MARKER: paths.marker},
                          timeout=pace.scaled(DEFAULT_START_TIMEOUT))
        restarted.append("etcd")
    # The waits were set on a machine of pace 1; under emulation everything takes many times longer.
    timeout = pace.scaled(READY_TIMEOUT_BASE + READY_TIMEOUT_PER_NODE * nodes)
    if kubernetes:
        progress("starting kube-apiserver" if apiserver_pid(paths) is None else "checking kube-apiserver")
        if ensure_apiserver(paths, etcd.client_url, pace.scaled(apiserver_timeout(nodes))):
            restarted.append("kube-apiserver")
    elif mode == "ipsec":
        _ensure_etcd_secret(etcd.client_url, name, values, progress)
    plan = topology.plan_topology(name, nodes, subnet)
    per_node = parse_node_sets(node_sets, [node.name for node in plan.nodes])
    # On Kubernetes the same settings are CiliumNodeConfigs (kube_up); files are the etcd lab's way.
    write_node_values(paths, values, {} if kubernetes else per_node, [node.name for node in plan.nodes])
    progress(f"{'checking' if existing else 'building'} {nodes} node namespaces on {subnet}")
    topology.build(plan)
    info = LabInfo(
        name=name,
        nodes=tuple(node.name for node in plan.nodes),
        node_ips={node.name: str(node.ip) for node in plan.nodes},
        subnet=str(subnet),
        store=kubernetes_store(paths) if kubernetes else etcd.client_url,
        paths=paths,
        control_plane=control_plane,
    )
    manifest = {"name": name, "nodes": list(info.nodes), "nodeIPs": info.node_ips, "subnet": info.subnet,
                "store": info.store, "controlPlane": control_plane,
                "kubeconfig": str(paths.kubeconfig.absolute()) if kubernetes else None,
                "created": existing["created"] if existing else time.time()}
    installed = bool(existing and existing.get("installed"))
    paths.write_manifest(manifest | {"installed": installed})
    if kubernetes:
        started, installed = kube_up(info, values, progress, installed=installed, timeout=timeout,
                                     node_sets=per_node)
        restarted += started
        paths.write_manifest(manifest | {"installed": installed})
    else:
        restarted += _start_daemons(info, timeout, progress)
    if existing:
        progress(f"lab {name} was there: restarted {', '.join(restarted)}" if restarted
                 else f"lab {name} was already up: nothing was missing")
    if not kubernetes or installed:
        progress("waiting until every node reaches every other")
        wait_ready(info, timeout=timeout)
    return info


def _ensure_etcd_secret(url: str, name: str, values: Values, progress: Progress) -> None:
    """The etcd mode's key Secret, created with a generated key line unless it is there."""
    with open_store(url, name) as store:
        secret_name = values.text("encryption.ipsec.secretName")
        if store.get_key_secret(name=secret_name) is None:
            line = generate_line()
            store.put_key_secret(line.format(reveal=True), name=secret_name, expect=Expect.ABSENT)
            progress(f"created secret kube-system/{secret_name} with key ID {line.key_id}")


def _start_daemons(info: LabInfo, timeout: float, progress: Progress) -> list[str]:
    """The etcd mode's agents and operator, those that do not run; what was started, for the message."""
    paths = info.paths
    missing = [node for node in info.nodes if agent_pid(info, node) is None]
    if missing:
        progress(f"starting {len(missing)} agents")
    for node in missing:
        start_agent(info, node)
    restarted = [f"the agent of {node}" for node in missing]
    if read_pidfile(paths.pids / "operator.pid") is None:
        # The operator comes once every node is registered, so its first pass hands out the pool in node
        # order: node-i gets the i-th block every time, and a pool too small refuses the last nodes.
        _wait_registered(info, timeout)
        progress("starting the operator")
        common = ["--store", info.store, "--cluster", info.name, "-f", str(paths.values)]
        start_daemon(_daemon_argv("operator", *common), pidfile=paths.pids / "operator.pid",
                     log=paths.logs / "operator.log", marker=paths.marker)
        restarted.append("the operator")
    return restarted


def _wait_registered(info: LabInfo, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with connect(info) as store:
        while missing := set(info.nodes) - {node.value.name for node in store.list_nodes()}:
            if time.monotonic() > deadline:
                raise LabError(f"lab {info.name}: {', '.join(sorted(missing))} did not register within "
                               f"{timeout:.0f} s (logs in {info.paths.logs})")
            time.sleep(0.1)


def start_agent(info: LabInfo, node: str, values: Path | None = None) -> int:
    """Start a node's agent with `values`, else its own (`--node-set`), else the lab's."""
    values = values or node_values_file(info.paths, node) or info.paths.values
    common = ["--store", info.store, "--cluster", info.name, "-f", str(values)]
    argv = _daemon_argv(
        "agent", *common, "--node", node, "--node-ip", info.node_ips[node],
        "--status-socket", str(info.paths.agent_socket(node)), "--state-dir", str(info.paths.node_dir(node)),
    )
    return start_daemon(argv, pidfile=info.paths.pids / f"agent-{node}.pid",
                        log=info.paths.logs / f"agent-{node}.log", netns=info.netns_of(node),
                        marker=info.paths.marker)


def agent_pid(info: LabInfo, node: str) -> int | None:
    return read_pidfile(info.paths.pids / f"agent-{node}.pid")


def agent_status(
    info: LabInfo, node: str, timeout: float = 3.0, *, reveal: bool = False
) -> dict[str, Any] | None:
    """The agent's own status (its SAs' keys only with `reveal`), or None if it does not answer."""
    try:
        return query_status(info.paths.agent_socket(node), timeout=timeout, reveal=reveal)
    except (OSError, ValueError):
        return None


def _node_ready(status: dict[str, Any] | None, peers: int) -> bool:
    if status is None or status.get("agent") != "ready":
        return False
    health = status.get("health", {})
    return bool(health.get("probed") == peers and health.get("reachable") == peers)


def wait_ready(info: LabInfo, timeout: float) -> None:
    """Wait until every agent is ready and reaches every peer; LabError naming what is missing if not."""
    deadline = time.monotonic() + timeout
    peers = len(info.nodes) - 1
    while True:
        statuses = {node: agent_status(info, node) for node in info.nodes}
        if all(_node_ready(status, peers) for status in statuses.values()):
            return
        refused = [f"{node}: {why}" for node, status in statuses.items()
                   if (why := _pod_cidr_refusal(status))]
        if refused:
            raise LabError(f"lab {info.name} cannot be ready: " + "; ".join(refused)
                           + f" (`ciphermesh status --lab {info.name}` shows more)")
        if time.monotonic() > deadline:
            raise LabError(f"lab {info.name} is not ready after {timeout:.0f} s: " + "; ".join(
                _not_ready_reason(node, statuses[node], peers) for node in info.nodes
                if not _node_ready(statuses[node], peers)
            ) + f" (`ciphermesh status --lab {info.name}` shows more; logs in {info.paths.logs})")
        time.sleep(0.5)


def _pod_cidr_refusal(status: dict[str, Any] | None) -> str | None:
    """The operator's reason for giving a node no pod CIDR: a lab's nodes are fixed, so it will not pass."""
    if status is None or status.get("podCIDRs"):
        return None
    reason = next((e for e in status.get("errors") or [] if "IPAM: " in e), None)
    return None if reason is None else reason[reason.index("IPAM: "):]


def _not_ready_reason(node: str, status: dict[str, Any] | None, peers: int) -> str:
    if status is None:
        return f"{node}: agent not answering"
    errors = status.get("errors") or []
    if errors:
        return f"{node}: {errors[0]}"
    health = status.get("health", {})
    if status.get("agent") == "ready":
        return f"{node}: reaches {health.get('reachable', 0)}/{peers} peers"
    return f"{node}: {status.get('agent')}"


def pod_cidr_of(info: LabInfo, node: str) -> tuple[IPv4Network, int]:
    """A node's pod CIDR and pod MTU, as its agent reports them."""
    status = agent_status(info, node)
    if status is None or not status.get("podCIDRs"):
        raise LabError(f"{node}: its agent does not answer or has no pod CIDR yet")
    return IPv4Network(status["podCIDRs"][0]), int(status["mtu"]["pod"])


def lab_log(info: LabInfo, what: str) -> Path:
    return info.paths.logs / f"{what}.log"
