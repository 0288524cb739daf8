"""`connectivity test`: a pod on every node, ICMP/TCP/UDP between every pair, the underlay captured meanwhile.

Node to node too, as Cilium's `node-to-node-encryption` test: host to remote host (ICMP), pod to remote
host (ICMP), host to remote pod (TCP); encrypted with node encryption on, seen in clear (sanity) without.
The pods and tcpdump are always removed, also on failure or Ctrl-C; the verdict is `wire_verdict.judge`.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_network
from pathlib import Path
from typing import Any

from ciphermesh.agent.modes import node_encryption
from ciphermesh.datapath.face import CILIUM_VXLAN
from ciphermesh.keys import KeyLineError, parse_secret
from ciphermesh.lab import probes
from ciphermesh.lab.capture import CaptureStats, underlay_capture
from ciphermesh.lab.cluster import agent_status, connect, running_values
from ciphermesh.lab.info import LabError, LabInfo
from ciphermesh.lab.names import underlay_netns
from ciphermesh.lab.plaintext_probe import inject_plaintext
from ciphermesh.lab.pod_registry import delete_pod_record, get_pod, run_pod
from ciphermesh.lab.pods import delete_pod
from ciphermesh.lab.wire import WireReport, analyse_capture
from ciphermesh.lab.wire_verdict import (
    Expectation,
    IPsecExpectation,
    NodeEncryptionExpectation,
    NodeSanityExpectation,
    ProbeRecord,
    SanityExpectation,
    StrictModeExpectation,
    Verdict,
    WireEvidence,
    WireGuardExpectation,
    judge,
    markers_in,
    probe_label,
    tunnel_pairs,
)
from ciphermesh.store.model import Node

POD_PREFIX = "cm-check"
ECHO_PORT = 7
PROBE_TIMEOUT = 3.0
SERVER_START_TIMEOUT = 10.0
PROTOCOLS = ("icmp", "tcp", "udp")
MAX_PARALLEL_PROBES = 8
Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    """Progress that says nothing."""


@dataclass(frozen=True)
class CheckPlan:
    """What the lab is configured for, and so what its underlay must show."""

    mode: str
    pod_cidrs: tuple[IPv4Network, ...]
    expectation: Expectation
    node_ips: tuple[str, ...] = ()
    node_encryption: bool = False
    # Strict mode on: each node's router IP, the destination of the plaintext it must drop.
    strict_targets: dict[str, str] | None = None


@dataclass(frozen=True)
class CheckPod:
    """A test pod with its echo server, or (`host`) the node itself."""

    node: str
    name: str
    ip: str
    netns: str
    host: bool = False


@dataclass(frozen=True)
class ConnectivityResult:
    """Everything one run measured and concluded."""

    lab: str
    mode: str
    pods: tuple[CheckPod, ...]
    probes: tuple[ProbeRecord, ...]
    evidence: WireEvidence
    capture: CaptureStats
    expectation: Expectation
    verdict: Verdict
    node_evidence: WireEvidence
    node_expectation: Expectation
    strict: tuple[WireEvidence, StrictModeExpectation] | None = None

    def summary(self) -> list[str]:
        lines = [*self.expectation.summary(self.evidence), *self.node_expectation.summary(self.node_evidence)]
        if self.strict is not None:
            lines += self.strict[1].summary(self.strict[0])
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "lab": self.lab,
            "mode": self.mode,
            "pods": [vars(pod) for pod in self.pods],
            "probes": [probe.as_dict() for probe in self.probes],
            "wire": self.evidence.as_dict(),
            "nodeToNode": {
                "mode": self.node_expectation.mode,
                "markersSent": len(self.node_evidence.markers_sent),
                "markersSeen": list(self.node_evidence.markers_seen),
            },
            "strictMode": None if self.strict is None else {
                "injected": dict(self.strict[1].injected),
                "dropped": dict(self.strict[1].dropped),
                "markersSeen": list(self.strict[0].markers_seen),
            },
            "capture": self.capture.as_dict(),
            "summary": self.summary(),
            "verdict": self.verdict.as_dict(),
        }


def _ipsec_spi(info: LabInfo, secret_name: str) -> int:
    with connect(info) as store:
        secret = store.get_key_secret(name=secret_name)
    if secret is None:
        raise LabError(f"lab {info.name}: IPsec is on but there is no secret kube-system/{secret_name}")
    try:
        return parse_secret(secret.value.keys).key_id
    except KeyLineError as exc:
        raise LabError(f"lab {info.name}: secret kube-system/{secret_name}: {exc}") from None


def _node_records(info: LabInfo) -> list[Node]:
    with connect(info) as store:
        records = {v.value.name: v.value for v in store.list_nodes()}
    nodes = []
    for name in info.nodes:
        record = records.get(name)
        if record is None or record.router_ip is None or not record.pod_cidrs:
            raise LabError(f"lab {info.name}: {name} has no router IP or pod CIDR yet "
                           f"(`ciphermesh status --lab {info.name}`)")
        nodes.append(record)
    return nodes


def check_plan(info: LabInfo) -> CheckPlan:
    """The mode the lab runs and the expectation its underlay must meet, from its values and store."""
    values = running_values(info)
    nodes = _node_records(info)
    networks = (ip_network(cidr) for node in nodes for cidr in node.pod_cidrs)
    cidrs = tuple(network for network in networks if isinstance(network, IPv4Network))
    node_ips = tuple(node.node_ip for node in nodes)
    strict = None
    if values.flag("encryption.strictMode.enabled"):
        strict = {node.name: str(node.router_ip) for node in nodes}
    if not values.flag("encryption.enabled"):
        return CheckPlan("disabled", cidrs, SanityExpectation(), node_ips, strict_targets=strict)
    host_too = node_encryption(values)
    kind = values.text("encryption.type")
    if kind == "wireguard":
        pairs = tunnel_pairs(node_ips)
        return CheckPlan("wireguard", cidrs, WireGuardExpectation(pairs), node_ips, host_too, strict)
    if kind != "ipsec":
        raise LabError(f"lab {info.name}: connectivity test checks IPsec, WireGuard and disabled "
                       f"encryption; encryption.type={kind} is not checked yet")
    spi = _ipsec_spi(info, values.text("encryption.ipsec.secretName"))
    tunnels = tunnel_pairs(str(node.router_ip) for node in nodes)
    return CheckPlan("ipsec", cidrs, IPsecExpectation(spi, tunnels), node_ips, host_too, strict)


def _echo_command() -> list[str]:
    port = str(ECHO_PORT)
    return [sys.executable, "-m", "ciphermesh.lab.echo_server", "--tcp", port, "--udp", port]


def _deploy(info: LabInfo, created: list[tuple[str, str]], progress: Progress) -> list[CheckPod]:
    """One pod with an echo server per node; `created` collects names as they are made, for cleanup."""
    progress(f"deploying {len(info.nodes)} check pods")
    pods = []
    for node in info.nodes:
        name = f"{POD_PREFIX}-{node}-{secrets.token_hex(2)}"
        created.append((name, node))
        record = run_pod(info, name, node, _echo_command())
        pods.append(CheckPod(node, name, record.ip, record.netns))
    for pod in pods:
        if not probes.wait_listening(pod.netns, ECHO_PORT, SERVER_START_TIMEOUT):
            raise LabError(f"the echo server in pod {pod.name} did not start within "
                           f"{SERVER_START_TIMEOUT:g} s (log: {info.paths.pod_dir() / pod.name}.log)")
    return pods


def _remove(info: LabInfo, created: list[tuple[str, str]], progress: Progress) -> list[str]:
    """Delete the check pods (their echo servers with them); what could not be deleted, never raising."""
    if created:
        progress(f"removing {len(created)} check pods")
    failed = []
    for name, node in created:
        try:
            get_pod(info, name)
        except LabError:
            # run_pod failed before recording it: remove whatever part of it exists.
            with contextlib.suppress(Exception):
                delete_pod(info.name, name, node_netns=info.netns_of(node))
            continue
        try:
            delete_pod_record(info, name)
        except Exception as exc:  # every pod gets its turn; the caller reports what failed
            failed.append(f"{name}: {exc}")
    return failed


@contextlib.contextmanager
def _check_pods(info: LabInfo, progress: Progress) -> Iterator[list[CheckPod]]:
    created: list[tuple[str, str]] = []
    failed: list[str] = []
    try:
        yield _deploy(info, created, progress)
    finally:
        failed = _remove(info, created, progress)
    if failed:
        raise LabError("could not delete check pods: " + "; ".join(failed))


@dataclass(frozen=True)
class _Task:
    src: CheckPod
    dst: CheckPod
    protocol: str
    marker: bytes

    @property
    def label(self) -> str:
        return probe_label(self.protocol, self.src.node, self.dst.node, self.src.host, self.dst.host)

    @property
    def node_to_node(self) -> bool:
        return self.src.host or self.dst.host


def _task(src: CheckPod, dst: CheckPod, protocol: str) -> _Task:
    if protocol == "icmp":
        marker = secrets.token_bytes(probes.PING_PATTERN_BYTES)
    else:
        marker = f"{POD_PREFIX} {protocol} {src.node}>{dst.node} {secrets.token_hex(8)}".encode()
    return _Task(src, dst, protocol, marker)


def _tasks(pods: list[CheckPod], hosts: dict[str, CheckPod]) -> list[_Task]:
    """Pod to pod in every protocol; then, per ordered pair, Cilium's three node-to-node probes."""
    pairs = [(src, dst) for src in pods for dst in pods if src is not dst]
    tasks = [_task(src, dst, protocol) for src, dst in pairs for protocol in PROTOCOLS]
    for src, dst in pairs:
        tasks += [
            _task(hosts[src.node], hosts[dst.node], "icmp"),
            _task(src, hosts[dst.node], "icmp"),
            _task(hosts[src.node], dst, "tcp"),
        ]
    return tasks


def _hosts(info: LabInfo) -> dict[str, CheckPod]:
    return {node: CheckPod(node, "host", info.node_ips[node], info.netns_of(node), host=True)
            for node in info.nodes}


def _node_expectation(plan: CheckPlan, node_tasks: list[_Task]) -> Expectation:
    if plan.node_encryption:
        return NodeEncryptionExpectation()
    # Without node encryption only what leaves from or for a node address goes in clear; a node to a
    # remote pod still goes through the engine, from its router IP.
    in_clear = {t.label for t in node_tasks if t.dst.host or plan.mode == "disabled"}
    labels = [t.label for t in node_tasks]
    return NodeSanityExpectation(tuple(label for label in labels if label in in_clear),
                                 tuple(label for label in labels if label not in in_clear))


def _probe(task: _Task, timeout: float) -> ProbeRecord:
    src, dst = task.src, task.dst
    if task.protocol == "icmp":
        outcome = probes.ping(src.netns, dst.ip, task.marker, timeout)
    elif task.protocol == "tcp":
        outcome = probes.tcp_echo(src.netns, dst.ip, ECHO_PORT, task.marker, timeout)
    else:
        outcome = probes.udp_echo(src.netns, dst.ip, ECHO_PORT, task.marker, timeout)
    return ProbeRecord(src.node, dst.node, task.protocol, src.ip, dst.ip, outcome.ok, outcome.rtt_ms,
                       outcome.error, src.host, dst.host)


def run_connectivity_test(
    info: LabInfo, progress: Progress = _quiet, *, timeout: float = PROBE_TIMEOUT
) -> ConnectivityResult:
    """Probe every ordered pair of nodes pod to pod while capturing the underlay, then judge the capture."""
    plan = check_plan(info)
    with _check_pods(info, progress) as pods, tempfile.TemporaryDirectory(prefix="cm-check-") as tmp:
        path = Path(tmp) / "underlay.pcap"
        progress(f"capturing on br0 in {underlay_netns(info.name)}")
        with underlay_capture(info.name, path) as capture:
            tasks = _tasks(pods, _hosts(info))
            progress(f"probing {len(tasks)} times: {', '.join(PROTOCOLS)} between every pair of nodes' pods, "
                     "and node to node")
            with ThreadPoolExecutor(max_workers=MAX_PARALLEL_PROBES) as pool:
                results = list(pool.map(lambda task: _probe(task, timeout), tasks))
            strict = None
            if plan.strict_targets is not None:
                progress("strict mode: forcing plaintext pod packets out cilium_vxlan on every node")
                strict = _strict_injections(info, pods, plan.strict_targets)
            stats = capture.stop()
        pcap = path.read_bytes()
    progress("analysing the capture")
    report = analyse_capture(pcap, plan.pod_cidrs, node_ips=plan.node_ips)
    evidence = _evidence(report, pcap, {t.label: t.marker for t in tasks if not t.node_to_node}, stats)
    node_tasks = [t for t in tasks if t.node_to_node]
    node_evidence = _evidence(report, pcap, {t.label: t.marker for t in node_tasks}, stats)
    node_expectation = _node_expectation(plan, node_tasks)
    verdict = judge(results, evidence, plan.expectation)
    extra = node_expectation.problems(node_evidence)
    strict_check = None
    if strict is not None:
        expectation, markers = strict
        strict_evidence = _evidence(report, pcap, markers, stats)
        strict_check = (strict_evidence, expectation)
        extra += expectation.problems(strict_evidence)
    if extra:
        verdict = Verdict(False, (*verdict.reasons, *extra))
    return ConnectivityResult(info.name, plan.mode, tuple(pods), tuple(results), evidence, stats,
                              plan.expectation, verdict, node_evidence, node_expectation, strict_check)


def _strict_drops(info: LabInfo) -> dict[str, int | None]:
    drops: dict[str, int | None] = {}
    for node in info.nodes:
        status = agent_status(info, node) or {}
        drops[node] = ((status.get("encryption") or {}).get("strictMode") or {}).get("unencryptedDrops")
    return drops


def _strict_injections(
    info: LabInfo, pods: list[CheckPod], router_ips: dict[str, str]
) -> tuple[StrictModeExpectation, dict[str, bytes]]:
    """From each node, a check pod's packet to every peer's router IP forced out cilium_vxlan in clear:
    what a datapath that forgot to encrypt would send (Cilium's strict-mode test deletes IPCache entries)."""
    before = _strict_drops(info)
    markers: dict[str, bytes] = {}
    injected = dict.fromkeys(info.nodes, 0)
    for pod in pods:
        for peer, router in router_ips.items():
            if peer == pod.node:
                continue
            label = f"strict {pod.node} -> {peer}"
            markers[label] = f"{POD_PREFIX} {label} {secrets.token_hex(8)}".encode()
            inject_plaintext(info.netns_of(pod.node), src=IPv4Address(pod.ip), dst=IPv4Address(router),
                             device=CILIUM_VXLAN, payload=markers[label])
            injected[pod.node] += 1
    after = _strict_drops(info)
    dropped: dict[str, int | None] = {}
    for node in info.nodes:
        start, end = before[node], after[node]
        dropped[node] = None if start is None or end is None else end - start
    return StrictModeExpectation(injected, dropped), markers


def _evidence(
    report: WireReport, pcap: bytes, markers: dict[str, bytes], stats: CaptureStats
) -> WireEvidence:
    return WireEvidence(report, tuple(markers), markers_in(pcap, markers), stats.dropped_by_kernel)
