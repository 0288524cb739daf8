"""A whole cluster on this machine: etcd, the topology, the operator and one agent per node; up and down."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import yaml

from ciphermesh.agent.modes import UnsupportedModeError, agent_mode, node_encryption
from ciphermesh.agent.status_socket import query_status
from ciphermesh.config import Values, load_values
from ciphermesh.keys import generate_line
from ciphermesh.lab import netns, topology
from ciphermesh.lab.names import node_netns
from ciphermesh.lab.processes import kill_netns_processes, read_pidfile, start_daemon, stop_daemon
from ciphermesh.lab.state import LabPaths, write_private
from ciphermesh.operator.ipam import MASK_KEY, POOL_KEY, ClusterPool, IPAMConfigError
from ciphermesh.store.etcd_process import running_etcd, start_etcd, stop_etcd
from ciphermesh.store.etcd_store import EtcdStore

MAX_NODES = 64
READY_TIMEOUT_BASE = 45.0
READY_TIMEOUT_PER_NODE = 3.0
Progress = Callable[[str], None]


class LabError(RuntimeError):
    """A lab could not be built, found or removed; the message says what to do."""


@dataclass(frozen=True)
class LabInfo:
    """What `lab up` recorded about a running lab."""

    name: str
    nodes: tuple[str, ...]
    node_ips: dict[str, str]
    subnet: str
    store: str
    paths: LabPaths

    def values(self) -> Values:
        """The values the lab was started with."""
        return load_values(files=[str(self.paths.values)])

    def netns_of(self, node: str) -> str:
        if node not in self.node_ips:
            known = ", ".join(self.nodes)
            raise LabError(f"lab {self.name} has no node {node!r} (nodes: {known})")
        return node_netns(self.name, self.nodes.index(node) + 1)


def store_endpoint(paths: LabPaths) -> str:
    info = running_etcd(paths.root)
    if info is None:
        raise LabError(f"lab {paths.name}: its etcd is not running; `ciphermesh lab down --name {paths.name}`"
                       " cleans up, then `lab up` starts afresh")
    return info.unix_url


def load_lab(name: str) -> LabInfo:
    """The running lab called `name`, or LabError saying there is none."""
    paths = LabPaths.of(name)
    manifest = paths.read_manifest()
    if manifest is None:
        raise LabError(f"no lab named {name!r} is up (start one with `ciphermesh lab up --name {name}`)")
    return LabInfo(
        name=name,
        nodes=tuple(manifest["nodes"]),
        node_ips=dict(manifest["nodeIPs"]),
        subnet=manifest["subnet"],
        store=manifest["store"],
        paths=paths,
    )


def connect(info: LabInfo) -> EtcdStore:
    return EtcdStore.connect(store_endpoint(info.paths), info.name)


def _daemon_argv(command: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "ciphermesh", command, *args]


def encryption_words(values: Values) -> str:
    """`IPsec`, `WireGuard + node encryption + strict mode`, `encryption disabled`: for messages."""
    try:
        mode = agent_mode(values)
    except UnsupportedModeError:
        return "unsupported encryption settings"
    if mode == "disabled":
        return "encryption disabled"
    words = [{"ipsec": "IPsec", "wireguard": "WireGuard"}[mode]]
    words += ["node encryption"] if node_encryption(values) else []
    words += ["strict mode"] if values.flag("encryption.strictMode.enabled") else []
    return " + ".join(words)


def _refuse_leftovers(paths: LabPaths, values: Values) -> None:
    residue = netns.lab_residue(paths.name)
    if paths.root.exists() or residue.namespaces or residue.pids:
        running = paths.read_manifest() is not None and running_etcd(paths.root) is not None
        if running and paths.values.exists():
            now, asked = encryption_words(load_values(files=[str(paths.values)])), encryption_words(values)
            if now != asked:
                # Nodes switched one by one would disagree meanwhile: isolated, never in clear, but down.
                raise LabError(f"lab {paths.name} is already up, with {now}; switching a running lab to "
                               f"{asked} is not supported: run `ciphermesh lab down --name {paths.name}` "
                               "first, then `lab up` again")
        state = "is already up" if running else "left things behind (a crash?)"
        found = ", ".join(residue.namespaces[:4]) or str(paths.root)
        raise LabError(
            f"lab {paths.name} {state}: {found}; run `ciphermesh lab down --name {paths.name}` first"
        )


def _check_pool(values: Values) -> None:
    """Refuse a pool the operator would refuse, before anything is built (it would exit, nodes would wait)."""
    try:
        ClusterPool.parse([str(c) for c in values.cidrs(POOL_KEY)], values.number(MASK_KEY))
    except IPAMConfigError as exc:
        raise LabError(str(exc)) from None


def lab_up(name: str, nodes: int, values: Values, progress: Progress) -> LabInfo:
    """Build the lab and return once every agent is ready and every node reaches every other."""
    if not 1 <= nodes <= MAX_NODES:
        raise LabError(f"--nodes {nodes}: a lab has 1 to {MAX_NODES} nodes")
    try:
        mode = agent_mode(values)
    except UnsupportedModeError as exc:
        raise LabError(str(exc)) from None
    _check_pool(values)
    paths = LabPaths.of(name)
    _refuse_leftovers(paths, values)
    paths.create()
    write_private(paths.values, yaml.safe_dump(values.as_tree(), sort_keys=False))
    progress("starting etcd")
    etcd = start_etcd(paths.root)
    store_url = etcd.unix_url
    with EtcdStore.connect(store_url, name) as store:
        if mode == "ipsec":
            secret_name = values.text("encryption.ipsec.secretName")
            if store.get_key_secret(name=secret_name) is None:
                line = generate_line()
                store.put_key_secret(line.format(reveal=True), name=secret_name, expect_revision=0)
                progress(f"created secret kube-system/{secret_name} with key ID {line.key_id}")
    subnet = topology.choose_subnet(topology.host_networks())
    plan = topology.plan_topology(name, nodes, subnet)
    progress(f"building {nodes} node namespaces on {subnet}")
    topology.build(plan)
    info = LabInfo(
        name=name,
        nodes=tuple(node.name for node in plan.nodes),
        node_ips={node.name: str(node.ip) for node in plan.nodes},
        subnet=str(subnet),
        store=store_url,
        paths=paths,
    )
    paths.write_manifest({"name": name, "nodes": list(info.nodes), "nodeIPs": info.node_ips,
                          "subnet": info.subnet, "store": store_url, "created": time.time()})
    common = ["--store", store_url, "--cluster", name, "-f", str(paths.values)]
    timeout = READY_TIMEOUT_BASE + READY_TIMEOUT_PER_NODE * nodes
    progress(f"starting {nodes} agents")
    for node in plan.nodes:
        start_agent(info, node.name)
    # The operator comes once every node is registered, so its first pass hands out the pool in node
    # order: node-i gets the i-th block every time, and a pool too small refuses the last nodes.
    _wait_registered(info, timeout)
    progress("starting the operator; waiting until every node reaches every other")
    start_daemon(_daemon_argv("operator", *common), pidfile=paths.pids / "operator.pid",
                 log=paths.logs / "operator.log")
    wait_ready(info, timeout=timeout)
    return info


def _wait_registered(info: LabInfo, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with connect(info) as store:
        while missing := set(info.nodes) - {node.value.name for node in store.list_nodes()}:
            if time.monotonic() > deadline:
                raise LabError(f"lab {info.name}: {', '.join(sorted(missing))} did not register within "
                               f"{timeout:.0f} s (logs in {info.paths.logs})")
            time.sleep(0.1)


def start_agent(info: LabInfo, node: str, values: Path | None = None) -> int:
    """Start a node's agent with the lab's values, or with `values` (a node set up differently)."""
    common = ["--store", info.store, "--cluster", info.name, "-f", str(values or info.paths.values)]
    argv = _daemon_argv(
        "agent", *common, "--node", node, "--node-ip", info.node_ips[node],
        "--status-socket", str(info.paths.agent_socket(node)), "--state-dir", str(info.paths.node_dir(node)),
    )
    return start_daemon(argv, pidfile=info.paths.pids / f"agent-{node}.pid",
                        log=info.paths.logs / f"agent-{node}.log", netns=info.netns_of(node))


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


def lab_down(name: str, progress: Progress) -> None:
    """Remove everything the lab made: processes, namespaces, etcd, state. Idempotent."""
    paths = LabPaths.of(name)
    pidfiles = sorted(paths.pids.glob("*.pid")) if paths.pids.exists() else []
    # All at once: each daemon takes a moment to shut down cleanly, and they do not wait for each other.
    with ThreadPoolExecutor(max_workers=max(1, len(pidfiles))) as pool:
        list(pool.map(stop_daemon, pidfiles))
    for namespace in netns.lab_residue(name).namespaces:
        kill_netns_processes(namespace)
    removed = topology.teardown(name)
    if removed:
        progress(f"removed {len(removed)} namespaces")
    if paths.root.exists():
        stop_etcd(paths.root)
        shutil.rmtree(paths.root, ignore_errors=True)
        progress(f"removed {paths.root}")


def pod_cidr_of(info: LabInfo, node: str) -> tuple[IPv4Network, int]:
    """A node's pod CIDR and pod MTU, as its agent reports them."""
    status = agent_status(info, node)
    if status is None or not status.get("podCIDRs"):
        raise LabError(f"{node}: its agent does not answer or has no pod CIDR yet")
    return IPv4Network(status["podCIDRs"][0]), int(status["mtu"]["pod"])


def lab_log(info: LabInfo, what: str) -> Path:
    return info.paths.logs / f"{what}.log"
