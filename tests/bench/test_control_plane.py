"""The control-plane benchmark at its smallest size, both modes: the output's shape and plausible numbers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ciphermesh.bench.control_plane import BenchPlan, markdown
from ciphermesh.bench.lab_measure import BenchError
from ciphermesh.bench.lab_usage import usage, usages
from ciphermesh.lab import netns
from ciphermesh.lab.processes import marked_pids
from ciphermesh.lab.state import lab_root
from tests.support.names import unique_lab

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "control_plane_bench.py"
# Two 2-node labs, one with a kube-apiserver: minutes on a busy 2-core machine.
RUN_TIMEOUT = 600
TEARDOWN_TIMEOUT = 120


def test_plan_refuses_what_it_cannot_run() -> None:
    with pytest.raises(BenchError, match="nomad"):
        BenchPlan(("etcd", "nomad"), (2,), 1, 3.0, 3.0, 0.05, "cb")
    with pytest.raises(BenchError, match="2 nodes"):
        BenchPlan(("etcd",), (1,), 1, 3.0, 3.0, 0.05, "cb")
    with pytest.raises(BenchError, match="6 characters"):
        BenchPlan(("etcd",), (2,), 1, 3.0, 3.0, 0.05, "cb12345")
    plan = BenchPlan(("etcd", "kubernetes"), (3, 20), 1, 3.0, 3.0, 0.05, "cb1234")
    assert list(plan.labs()) == [("etcd", 3, "cb1234e0"), ("kubernetes", 3, "cb1234k0"),
                                 ("etcd", 20, "cb1234e1"), ("kubernetes", 20, "cb1234k1")]


def _check_rotation(record: dict[str, Any]) -> None:
    written = record["secretWrittenSeconds"]
    assert 0 < written <= record["commandSeconds"] + 1.0  # the store holds it about when the command ends
    assert written < record["sendingSeconds"] <= record["settledSeconds"]
    assert record["sendingAfterWriteSeconds"] == pytest.approx(record["sendingSeconds"] - written, abs=0.002)
    assert 0 <= record["publishedAfterWriteSeconds"] < 120
    # The old key is kept for the grace period (3 s) before a node holds the new one alone.
    assert record["settledSeconds"] >= 3.0
    assert record["maxKeysInUse"] >= 2
    assert record["agentsCpuSeconds"] > 0


def _check_summary(row: dict[str, Any]) -> None:
    assert row["nodes"] == 2 and row["rotations"] == 1
    assert 1 < row["labUpSeconds"] < RUN_TIMEOUT
    idle = row["idle"]
    assert idle["seconds"] >= 3
    # An idle agent with its watches open uses far less than one core, and tens of MiB. Over a 3 s idle
    # window its few ms of CPU can round to 0 clock ticks (CI saw it), so only the bounds are checked here.
    assert 0 <= idle["agentCpuSecondsPerMinute"]["median"] <= idle["agentCpuSecondsPerMinute"]["max"] < 60
    assert 10 < idle["agentRssMiB"]["median"] <= idle["agentRssMiB"]["max"] < 1024
    daemons = idle["daemons"]
    expected = {"etcd", "operator"} | ({"kubeApiserver", "kubelet", "relay"}
                                       if row["controlPlane"] == "kubernetes" else set())
    assert set(daemons) == expected
    for role, daemon in daemons.items():
        assert daemon["processes"] >= 1 and daemon["rssMiB"] > 1, role
        assert 0 <= daemon["cpuSecondsPerMinute"] < 120, role
    if row["controlPlane"] == "kubernetes":
        assert daemons["kubeApiserver"]["cpuSecondsPerMinute"] > 0  # it serves the agents' watches and Leases
        assert daemons["operator"]["processes"] == 2  # the chart's two replicas
    assert len(row["loadBefore"]) == len(row["loadAfter"]) == 3


def _residue(prefix: str) -> list[str]:
    found = [name for name in netns.names() if name.startswith(prefix)]
    root = lab_root()
    labs = [entry for entry in root.iterdir() if entry.name.startswith(prefix)] if root.exists() else []
    return found + [str(lab) for lab in labs] + [str(pid) for lab in labs for pid in marked_pids(str(lab))]


def _run_bench(prefix: str, log: Path) -> tuple[int, str, str]:
    """The benchmark's exit code, stdout and stderr; past RUN_TIMEOUT it is stopped with SIGTERM, which
    unwinds through its labs' teardown, and the test fails with the step its progress log last named."""
    argv = [sys.executable, str(SCRIPT), "--nodes", "2", "--rotations", "1", "--idle", "3",
            "--control-plane", "etcd,kubernetes", "--lab-prefix", prefix, "-o", "markdown"]
    with open(log, "w+") as err:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            out, _ = process.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=TEARDOWN_TIMEOUT)
            process.kill()
            process.communicate()
            err.seek(0)
            pytest.fail(f"the benchmark ran past {RUN_TIMEOUT} s; its log ends: {err.read()[-3000:]}")
        err.seek(0)
        return process.returncode, out, err.read()


@pytest.mark.netns
@pytest.mark.slow
@needs_root
@pytest.mark.timeout(RUN_TIMEOUT + TEARDOWN_TIMEOUT + 60)
def test_smallest_run_on_both_control_planes(tmp_path: Path) -> None:
    prefix = unique_lab("cb")
    try:
        returncode, out, err = _run_bench(prefix, tmp_path / "bench.log")
        assert returncode == 0, err[-3000:]
        lines = out.splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        rotations = [r for r in records if "summary" not in r]
        summaries = [r["summary"] for r in records if "summary" in r]
        assert [(r["controlPlane"], r["nodes"]) for r in rotations] == [("etcd", 2), ("kubernetes", 2)]
        assert [s["controlPlane"] for s in summaries] == ["etcd", "kubernetes"]
        for record in rotations:
            _check_rotation(record)
        for row in summaries:
            _check_summary(row)
        table = [line for line in lines if line.startswith("|")]
        assert table == markdown(summaries).splitlines()
        assert len(table) == 4 and "kube-apiserver CPU" in table[0]
        assert f"lab {prefix}k0: rotating to key" in err  # the progress log names the lab and the step
    finally:
        assert not _residue(prefix), "the benchmark left its labs behind"


def test_usage_counts_descendants_but_not_other_groups() -> None:
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & wait"])
    sleeper = None
    try:
        deadline = time.monotonic() + 30
        # Until the child has exec'd sleep: between fork and exec its memory is still changing (CI saw it).
        while not (children := _children_of(shell.pid)) or _comm(children[0]) != "sleep":
            assert time.monotonic() < deadline, "sh did not start sleep within 30 s"
            time.sleep(0.05)
        [sleeper] = children
        alone, both = usage([shell.pid], others=frozenset({sleeper})), usage([shell.pid])
        assert both.rss_bytes - alone.rss_bytes == usage([sleeper]).rss_bytes > 0
        assert usages({"shell": [shell.pid], "sleep": [sleeper]})["shell"].rss_bytes == alone.rss_bytes
    finally:
        for pid in (sleeper, shell.pid):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        shell.wait(timeout=30)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def _children_of(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
