"""`connectivity test`: a pod on every node, ICMP/TCP/UDP between every pair, the underlay captured meanwhile.

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
from ipaddress import IPv4Network, ip_network
from pathlib import Path
from typing import Any

from ciphermesh.config import load_values
from ciphermesh.keys import KeyLineError, parse_secret
from ciphermesh.lab import probes
from ciphermesh.lab.capture import CaptureStats, underlay_capture
from ciphermesh.lab.cluster import LabError, LabInfo, connect
from ciphermesh.lab.names import underlay_netns
from ciphermesh.lab.pod_registry import delete_pod_record, get_pod, run_pod
from ciphermesh.lab.pods import delete_pod
from ciphermesh.lab.wire import analyse_capture
from ciphermesh.lab.wire_verdict import (
    Expectation,
    IPsecExpectation,
    ProbeRecord,
    SanityExpectation,
    Verdict,
    WireEvidence,
    WireGuardExpectation,
    judge,
    markers_in,
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


@dataclass(frozen=True)
class CheckPod:
    """A test pod with its echo server."""

    node: str
    name: str
    ip: str
    netns: str


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

    def summary(self) -> list[str]:
        return self.expectation.summary(self.evidence)

    def as_dict(self) -> dict[str, Any]:
        return {
            "lab": self.lab,
            "mode": self.mode,
            "pods": [vars(pod) for pod in self.pods],
            "probes": [probe.as_dict() for probe in self.probes],
            "wire": self.evidence.as_dict(),
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
    values = load_values([str(info.paths.values)])
    nodes = _node_records(info)
    networks = (ip_network(cidr) for node in nodes for cidr in node.pod_cidrs)
    cidrs = tuple(network for network in networks if isinstance(network, IPv4Network))
    if not values.flag("encryption.enabled"):
        return CheckPlan("disabled", cidrs, SanityExpectation())
    kind = values.text("encryption.type")
    if kind == "wireguard":
        return CheckPlan("wireguard", cidrs, WireGuardExpectation(tunnel_pairs(n.node_ip for n in nodes)))
    if kind != "ipsec":
        raise LabError(f"lab {info.name}: connectivity test checks IPsec, WireGuard and disabled "
                       f"encryption; encryption.type={kind} is not checked yet")
    spi = _ipsec_spi(info, values.text("encryption.ipsec.secretName"))
    tunnels = tunnel_pairs(str(node.router_ip) for node in nodes)
    return CheckPlan("ipsec", cidrs, IPsecExpectation(spi, tunnels))


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
        return f"{self.protocol} {self.src.node} -> {self.dst.node}"


def _tasks(pods: list[CheckPod]) -> list[_Task]:
    tasks = []
    for src in pods:
        for dst in pods:
            if src is dst:
                continue
            for protocol in PROTOCOLS:
                if protocol == "icmp":
                    marker = secrets.token_bytes(probes.PING_PATTERN_BYTES)
                else:
                    marker = f"{POD_PREFIX} {protocol} {src.node}>{dst.node} {secrets.token_hex(8)}".encode()
                tasks.append(_Task(src, dst, protocol, marker))
    return tasks


def _probe(task: _Task, timeout: float) -> ProbeRecord:
    src, dst = task.src, task.dst
    if task.protocol == "icmp":
        outcome = probes.ping(src.netns, dst.ip, task.marker, timeout)
    elif task.protocol == "tcp":
        outcome = probes.tcp_echo(src.netns, dst.ip, ECHO_PORT, task.marker, timeout)
    else:
        outcome = probes.udp_echo(src.netns, dst.ip, ECHO_PORT, task.marker, timeout)
    return ProbeRecord(src.node, dst.node, task.protocol, src.ip, dst.ip, outcome.ok, outcome.rtt_ms,
                       outcome.error)


def run_connectivity_test(
    info: LabInfo, progress: Progress = _quiet, *, timeout: float = PROBE_TIMEOUT
) -> ConnectivityResult:
    """Probe every ordered pair of nodes pod to pod while capturing the underlay, then judge the capture."""
    plan = check_plan(info)
    with _check_pods(info, progress) as pods, tempfile.TemporaryDirectory(prefix="cm-check-") as tmp:
        path = Path(tmp) / "underlay.pcap"
        progress(f"capturing on br0 in {underlay_netns(info.name)}")
        with underlay_capture(info.name, path) as capture:
            tasks = _tasks(pods)
            progress(f"probing {len(tasks)} times: {', '.join(PROTOCOLS)} between every pair of nodes")
            with ThreadPoolExecutor(max_workers=MAX_PARALLEL_PROBES) as pool:
                results = list(pool.map(lambda task: _probe(task, timeout), tasks))
            stats = capture.stop()
        pcap = path.read_bytes()
    progress("analysing the capture")
    report = analyse_capture(pcap, plan.pod_cidrs)
    markers = {task.label: task.marker for task in tasks}
    evidence = WireEvidence(report, tuple(markers), markers_in(pcap, markers), stats.dropped_by_kernel)
    verdict = judge(results, evidence, plan.expectation)
    return ConnectivityResult(info.name, plan.mode, tuple(pods), tuple(results), evidence, stats,
                              plan.expectation, verdict)
