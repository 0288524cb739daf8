"""The Kubernetes control plane beside etcd: `lab up` time, key rotation convergence from the write of
the Secret (`kubectl patch secret`, or `encryption key set` on etcd), and what the agents and the control
plane cost while idle with their watches open. One row per control plane and node count."""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ciphermesh.bench.lab_measure import BenchError
from ciphermesh.bench.lab_usage import agent_pids, daemon_pids, usages
from ciphermesh.bench.rotation import look_seconds, measure_rotation
from ciphermesh.config import load_values
from ciphermesh.keys import generate_line, next_key_id, parse_secret
from ciphermesh.lab.cluster import connect, lab_up, running_values
from ciphermesh.lab.down import lab_down
from ciphermesh.lab.info import CONTROL_PLANES, KUBERNETES, LabInfo

MEDIANS = ("secretWrittenSeconds", "commandSeconds", "publishedAfterWriteSeconds", "sendingAfterWriteSeconds",
           "sendingSeconds", "settledSeconds")
MIB = 1024 * 1024
Emit = Callable[[dict[str, Any]], None]
# Progress goes to this logger, so a run that stalls says in which lab and step it was.
_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchPlan:
    """What to run: every control plane at every node count, `rotations` each, then `idle` seconds."""

    control_planes: tuple[str, ...]
    node_counts: tuple[int, ...]
    rotations: int
    idle: float
    grace: float
    poll: float
    lab_prefix: str

    def __post_init__(self) -> None:
        unknown = [plane for plane in self.control_planes if plane not in CONTROL_PLANES]
        if unknown or not self.control_planes:
            raise BenchError(f"--control-plane {','.join(unknown) or '(none)'}: choose from "
                             f"{', '.join(CONTROL_PLANES)}")
        if self.rotations < 1 or self.idle <= 0 or not self.node_counts or min(self.node_counts) < 2:
            raise BenchError("at least one rotation, an idle time above 0 and 2 nodes or more are needed")
        if len(self.lab_prefix) > 6:
            raise BenchError(f"--lab-prefix {self.lab_prefix!r}: at most 6 characters (names are 8)")

    def labs(self) -> Iterator[tuple[str, int, str]]:
        """(control plane, nodes, lab name): both modes at one size before the next size, so they share
        the machine's conditions as closely as one run allows."""
        for index, nodes in enumerate(self.node_counts):
            for plane in self.control_planes:
                yield plane, nodes, f"{self.lab_prefix}{plane[0]}{index}"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _write_command(info: LabInfo, secret: str, line: str) -> tuple[list[str], str | None, dict[str, str]]:
    """The seed's write of the next key: `kubectl patch secret` on Kubernetes (the lab's kubectl and
    admin kubeconfig, as `lab env` gives them), `ciphermesh encryption key set -` (line on stdin) on etcd."""
    if info.control_plane == KUBERNETES:
        patch = '{"stringData":{"keys":"' + line + '"}}'
        env = {**os.environ, "KUBECONFIG": str(info.paths.kubeconfig)}
        return ([str(info.paths.kube_bin / "kubectl"), "patch", "secret", "-n", "kube-system", secret,
                 "--request-timeout=60s", "-p", patch], None, env)
    return ([sys.executable, "-m", "ciphermesh", "encryption", "key", "set", "--lab", info.name, "-"],
            line, dict(os.environ))


def _rotate(info: LabInfo, poll: float, grace: float) -> dict[str, Any]:
    secret = running_values(info).text("encryption.ipsec.secretName")
    with connect(info) as store:
        stored = store.get_key_secret(name=secret)
    if stored is None:
        raise BenchError(f"lab {info.name}: no secret kube-system/{secret}")
    key_id = next_key_id(parse_secret(stored.value.keys).key_id)
    argv, stdin, env = _write_command(info, secret, generate_line(key_id=key_id).format(reveal=True))
    _LOG.info("lab %s: rotating to key %d with %s", info.name, key_id, os.path.basename(argv[0]))
    run, _out = measure_rotation(info, secret, key_id, argv, poll=poll, grace=grace, stdin=stdin, env=env)
    return run


def _idle(info: LabInfo, seconds: float) -> dict[str, Any]:
    """CPU seconds per minute and resident MiB over `seconds` with nothing changing: per agent (median and
    max over nodes) and per control-plane daemon role."""
    agents = {node: [pid] for node, pid in agent_pids(info).items()}
    if set(agents) != set(info.nodes):
        missing = sorted(set(info.nodes) - set(agents))
        raise BenchError(f"lab {info.name}: no running agent found on {', '.join(missing)}")
    groups = {f"agent:{node}": pids for node, pids in agents.items()} | daemon_pids(info)
    before = usages(groups)
    began = time.monotonic()
    time.sleep(seconds)  # the measurement window itself
    after = usages(groups)
    elapsed = time.monotonic() - began

    def per_minute(name: str) -> float:
        return (after[name].cpu_seconds - before[name].cpu_seconds) * 60 / elapsed

    agent_cpu = [per_minute(f"agent:{node}") for node in info.nodes]
    agent_rss = [after[f"agent:{node}"].rss_bytes / MIB for node in info.nodes]
    daemons = {role: {"cpuSecondsPerMinute": round(per_minute(role), 3),
                      "rssMiB": round(after[role].rss_bytes / MIB, 1), "processes": len(groups[role])}
               for role in daemon_pids(info) if groups.get(role)}
    return {"seconds": round(elapsed, 1),
            "agentCpuSecondsPerMinute": {"median": round(statistics.median(agent_cpu), 3),
                                         "max": round(max(agent_cpu), 3)},
            "agentRssMiB": {"median": round(statistics.median(agent_rss), 1),
                            "max": round(max(agent_rss), 1)},
            "daemons": daemons}


def bench_lab(plane: str, nodes: int, name: str, plan: BenchPlan, emit: Emit) -> dict[str, Any]:
    """One lab: up (with IPsec: on Kubernetes that installs the chart), rotations, idle; always torn down."""
    values = load_values(sets=["encryption.enabled=true", "encryption.type=ipsec",
                               f"encryption.ipsec.keyRotationDuration={plan.grace:g}s"])
    load_before = load()
    runs = []
    try:
        began = time.monotonic()
        _LOG.info("lab %s: up with %d nodes on %s", name, nodes, plane)
        info = lab_up(name, nodes, values, lambda message: _LOG.info("lab %s: %s", name, message),
                      control_plane=plane)
        up_seconds = time.monotonic() - began
        for _ in range(plan.rotations):
            run = _rotate(info, plan.poll, plan.grace)
            emit({"controlPlane": plane, "nodes": nodes, **run})
            runs.append(run)
        look = look_seconds(info, runs[-1]["keyID"])
        _LOG.info("lab %s: %g s idle", name, plan.idle)
        idle = _idle(info, plan.idle)
        load_after = load()
    finally:
        _LOG.info("lab %s: down", name)
        lab_down(name, lambda message: _LOG.info("lab %s: %s", name, message))
    return {
        "controlPlane": plane,
        "nodes": nodes,
        "labUpSeconds": round(up_seconds, 1),
        "rotations": len(runs),
        "graceSeconds": plan.grace,
        "pollSeconds": plan.poll,
        "lookSeconds": look,
        "median": {key: round(float(statistics.median(run[key] for run in runs)), 3) for key in MEDIANS},
        "max": {key: max(run[key] for run in runs) for key in ("sendingAfterWriteSeconds", "settledSeconds")},
        "idle": idle,
        "loadBefore": load_before,
        "loadAfter": load_after,
    }


def run_bench(plan: BenchPlan, emit: Emit) -> list[dict[str, Any]]:
    """Every lab of `plan`, in order; each rotation and each summary emitted as it is known."""
    rows = []
    for plane, nodes, name in plan.labs():
        row = bench_lab(plane, nodes, name, plan, emit)
        emit({"summary": row})
        rows.append(row)
    return rows


def _cpu(row: dict[str, Any], role: str) -> str:
    daemon = row["idle"]["daemons"].get(role)
    return "-" if daemon is None else f"{daemon['cpuSecondsPerMinute']:.2f}"


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table for docs/benchmarks.md: medians over rotations; idle CPU in CPU-seconds per minute."""
    head = ("| control plane | nodes | lab up s | write s | all published s | all on new SPI s (max) | "
            "agent CPU s/min (max) | agent RSS MiB | etcd CPU | kube-apiserver CPU | lab kubelet CPU | "
            "relay CPU | operator CPU | load before → after |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        median, cpu = row["median"], row["idle"]["agentCpuSecondsPerMinute"]
        lines.append(
            f"| {row['controlPlane']} | {row['nodes']} | {row['labUpSeconds']:.1f} | "
            f"{median['secretWrittenSeconds']:.2f} | {median['publishedAfterWriteSeconds']:.2f} | "
            f"{median['sendingAfterWriteSeconds']:.2f} ({row['max']['sendingAfterWriteSeconds']:.2f}) | "
            f"{cpu['median']:.2f} ({cpu['max']:.2f}) | {row['idle']['agentRssMiB']['median']:.0f} | "
            f"{_cpu(row, 'etcd')} | {_cpu(row, 'kubeApiserver')} | "
            f"{_cpu(row, 'kubelet')} | {_cpu(row, 'relay')} | {_cpu(row, 'operator')} | "
            f"{' '.join(f'{x:.2f}' for x in row['loadBefore'])} → "
            f"{' '.join(f'{x:.2f}' for x in row['loadAfter'])} |")
    return "\n".join(lines)
