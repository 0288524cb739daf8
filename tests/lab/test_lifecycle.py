"""Real labs through their life: bad input refused before anything is built, a pool too small, a crashed
lab brought back by `lab up`, `lab down` that is idempotent and touches nothing else, and a lab without
encryption whose plaintext the underlay capture does see."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciphermesh.lab import netns
from ciphermesh.lab.cluster import load_lab
from ciphermesh.lab.pod_registry import get_pod
from ciphermesh.lab.processes import pid_alive, read_pidfile
from ciphermesh.lab.state import LabPaths, lab_root
from ciphermesh.store.etcd.process import read_record
from tests.support.lab import (
    IPSEC,
    UP_ETCD,
    UnderlayCapture,
    analyse,
    assert_lab_gone,
    cli_json,
    error_line,
    lab_guard,
    lab_pids,
    node_entries,
    pod_cidrs,
    reach_all,
    run_cli,
)
from tests.support.names import unique_lab
from tests.support.netns import host_snapshot
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.timeout(180),
]

POOL = "ipam.operator.clusterPoolIPv4PodCIDRList"
MASK = "ipam.operator.clusterPoolIPv4MaskSize"


def _assert_nothing_built(lab: str) -> None:
    assert not netns.lab_residue(lab)
    assert not LabPaths.of(lab).root.exists()
    assert not lab_pids(lab)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--set", "foo.bar=1"), "foo.bar"),
        (("--set", "encryption.enabled=maybe"), "encryption.enabled"),
        (("--set", "encryption.type=tls"), "encryption.type"),
        (("--set", f"{MASK}=abc"), MASK),
        (("--set", f"{POOL}={{10.0.0.0/16}}", "--set", f"{MASK}=12"), MASK),
        (("--set", f"{POOL}={{10.0.0.0/16,10.0.0.0/20}}"), POOL),
        (("--nodes", "0"), "--nodes 0"),
        (("--nodes", "65"), "--nodes 65"),
    ],
)
def test_bad_values_are_refused_before_anything_is_built(args: tuple[str, ...], named: str) -> None:
    lab = unique_lab("lf")
    with lab_guard(lab):
        line = error_line(run_cli(*UP_ETCD, "--name", lab, *args))
        assert named in line
        _assert_nothing_built(lab)


def test_a_bad_values_file_and_a_bad_lab_name_are_refused(tmp_path: Path) -> None:
    lab = unique_lab("lf")
    values = tmp_path / "values.yaml"
    values.write_text("encryption:\n  enabled: true\n  typ: ipsec\n")
    with lab_guard(lab):
        assert "encryption.typ" in error_line(run_cli(*UP_ETCD, "--name", lab, "-f", str(values)))
        _assert_nothing_built(lab)
    assert "'Lab-1'" in error_line(run_cli(*UP_ETCD, "--name", "Lab-1"))
    assert "no lab named" in error_line(run_cli("status", "--lab", lab))


def test_a_pool_too_small_names_the_node_and_the_pool() -> None:
    lab = unique_lab("lf")
    with lab_guard(lab):
        up = run_cli(*UP_ETCD, "--name", lab, "--nodes", "3",
                     "--set", f"{POOL}={{10.0.0.0/23}}", "--set", f"{MASK}=24")
        line = error_line(up, alone=False)
        assert "node-3" in line and "10.0.0.0/23" in line and "exhausted" in line, line
        nodes = node_entries(lab)
        assert nodes["node-1"]["podCIDRs"] == ["10.0.0.0/24"] and nodes["node-1"]["agent"] == "ready"
        assert nodes["node-2"]["podCIDRs"] == ["10.0.1.0/24"] and nodes["node-2"]["agent"] == "ready"
        node3 = nodes["node-3"]
        assert node3["podCIDRs"] == [] and node3["agent"] != "ready"
        assert "IPAM: pool 10.0.0.0/23 exhausted: no /24 left for node-3" in node3["errors"], node3["errors"]
        table = run_cli("status", "--lab", lab)
        assert table.returncode != 0
        words = "node-3: IPAM: pool 10.0.0.0/23 exhausted: no /24 left for node-3"
        assert words in table.stdout, table.stdout


def _sigkill_everything(lab: str) -> set[int]:
    """What a crash (or `kill -9` of every daemon) leaves: namespaces, state dir, and pods' processes."""
    paths = LabPaths.of(lab)
    daemons = {pid for f in paths.pids.glob("*.pid") if (pid := read_pidfile(f)) is not None}
    record = read_record(paths.root)
    assert record is not None and pid_alive(record.pid)
    daemons.add(record.pid)
    assert len(daemons) == 4  # two agents, the operator, etcd
    for pid in daemons:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not any(pid_alive(pid) for pid in daemons), 5.0, "every daemon dead")
    return daemons


def test_a_crashed_lab_is_brought_back_by_lab_up_and_removed_by_lab_down() -> None:
    lab = unique_lab("lf")
    with lab_guard(lab):
        before = host_snapshot()
        up = run_cli(*UP_ETCD, "--name", lab, "--nodes", "2")
        assert up.returncode == 0, up.stderr
        pod = run_cli("lab", "pod", "run", "a", "--name", lab, "--node", "node-1", "--", "sleep", "300")
        assert pod.returncode == 0, pod.stderr
        sleeper = read_pidfile(LabPaths.of(lab).pod_dir() / "a.pid")
        assert sleeper is not None
        _sigkill_everything(lab)
        left = netns.lab_residue(lab)
        assert len(left.namespaces) == 4 and sleeper in left.pids

        # Other settings are refused, and touch nothing; the same ones bring back what is missing.
        line = error_line(run_cli(*UP_ETCD, "--name", lab, "--nodes", "2", *IPSEC))
        assert f"`ciphermesh lab down --name {lab}`" in line and "already up" in line, line
        assert netns.lab_residue(lab) == left
        assert lab_pids(lab) == {sleeper}

        again = run_cli(*UP_ETCD, "--name", lab, "--nodes", "2")
        assert again.returncode == 0, again.stderr
        assert "restarted etcd, the agent of node-1, the agent of node-2, the operator" in again.stderr
        assert all(node["agent"] == "ready" for node in node_entries(lab).values())
        assert pid_alive(sleeper)

        pids = lab_pids(lab)
        for _ in range(2):
            down = run_cli("lab", "down", "--name", lab)
            assert down.returncode == 0 and down.stdout == f"lab {lab} is down\n", down.stderr
            assert_lab_gone(lab, pids, before)


@pytest.fixture
def decoys() -> Iterator[tuple[str, list[str], Path, subprocess.Popen[bytes]]]:
    """A lab name, namespaces and a state dir that look like that lab's but are not, and a process."""
    lab = unique_lab("lf")
    names = [f"{lab}x-node-1", f"{lab}-keep", f"{lab}-node-01"]
    state = lab_root() / f"{lab}x"
    process: subprocess.Popen[bytes] | None = None
    try:
        for name in names:
            netns.create(name)
        state.mkdir(parents=True)
        (state / "lab.json").write_text(json.dumps({"name": f"{lab}x"}))
        process = netns.popen(f"{lab}-keep", ["sleep", "120"])
        yield lab, names, state, process
    finally:
        if process is not None:
            process.kill()
            process.wait()
        for name in names:
            netns.delete(name)
        shutil.rmtree(state, ignore_errors=True)


def test_lab_down_of_a_lab_that_never_existed_touches_nothing(
    decoys: tuple[str, list[str], Path, subprocess.Popen[bytes]],
) -> None:
    lab, names, state, process = decoys
    before = host_snapshot()
    for _ in range(2):
        down = run_cli("lab", "down", "--name", lab)
        assert down.returncode == 0, down.stderr
        assert down.stderr == ""
    assert all(netns.exists(name) for name in names)
    assert (state / "lab.json").exists()
    assert process.poll() is None
    assert not LabPaths.of(lab).root.exists()
    assert_lab_gone(lab, set(), before)


def test_without_encryption_the_capture_sees_plaintext(tmp_path: Path) -> None:
    lab = unique_lab("lf")
    with lab_guard(lab):
        up = run_cli(*UP_ETCD, "--name", lab, "--nodes", "2")
        assert up.returncode == 0, up.stderr
        assert "encryption disabled" in up.stdout
        info = load_lab(lab)
        for pod, node in (("a", "node-1"), ("b", "node-2")):
            assert run_cli("lab", "pod", "run", pod, "--name", lab, "--node", node).returncode == 0
        a, b = get_pod(info, "a"), get_pod(info, "b")
        for node in node_entries(lab).values():
            assert node["encryption"] == {"mode": "disabled", "engine": None, "keyID": None}
        assert cli_json("encryption", "status", "--lab", lab)["summary"]["mode"] == "disabled"
        reach_all([a, b], timeout=5.0)
        with UnderlayCapture(lab, tmp_path / "plain.pcap") as capture:
            ping = netns.run(a.netns, ["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", b.ip])
            assert "3 received" in ping.stdout
            report = analyse(capture, pod_cidrs(lab))
        assert report.esp == 0
        icmp = [s for s in report.plaintext_samples if s.protocol == "ICMP" and s.inside_vxlan]
        assert {(s.src, s.dst) for s in icmp} == {(a.ip, b.ip), (b.ip, a.ip)}
        assert report.plaintext_count >= 6
