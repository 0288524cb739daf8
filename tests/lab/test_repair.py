"""A lab that lost part of itself: `lab.json` gone (status still tells the truth), etcd, the operator and
an agent killed (`lab up` with the same settings brings them back, key unchanged), and the whole state
dir removed (`lab down` still stops everything the lab started, found by its marker and namespaces).

The tests share one 2-node IPsec lab, in this order; the last one removes it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator

import pytest

from ciphermesh.lab import netns
from ciphermesh.lab.cluster import LabInfo, agent_pid, connect, load_lab, wait_ready
from ciphermesh.lab.processes import marked_pids, pid_alive, read_pidfile
from ciphermesh.store.etcd.process import read_record, running_etcd
from tests.support.lab import (
    IPSEC,
    READY_TIMEOUT,
    UP_ETCD,
    error_line,
    lab_guard,
    node_entries,
    run_cli,
)
from tests.support.names import unique_lab
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.timeout(180),
]

UP = ("--nodes", "2", *IPSEC)


@pytest.fixture(scope="module")
def lab() -> Iterator[LabInfo]:
    name = unique_lab("lf")
    with lab_guard(name):
        up = run_cli(*UP_ETCD, "--name", name, *UP)
        assert up.returncode == 0, up.stderr
        yield load_lab(name)


def _key(info: LabInfo) -> tuple[str, int]:
    with connect(info) as store:
        secret = store.get_key_secret()
    assert secret is not None
    return secret.value.keys, secret.revision


def test_status_finds_the_lab_after_its_record_is_lost(lab: LabInfo) -> None:
    before = json.loads(lab.paths.manifest.read_text())
    lab.paths.manifest.unlink()
    status = run_cli("status", "--lab", lab.name)
    assert status.returncode == 0, status.stderr
    assert all(node["agent"] == "ready" for node in node_entries(lab.name).values())
    after = json.loads(lab.paths.manifest.read_text())
    assert {k: after[k] for k in ("nodes", "nodeIPs", "subnet", "store")} == \
        {k: before[k] for k in ("nodes", "nodeIPs", "subnet", "store")}

    # With the values gone too, nothing can stand in for them: status names both files and the repair.
    lab.paths.manifest.unlink()
    values = lab.paths.values.read_text()
    lab.paths.values.unlink()
    line = error_line(run_cli("status", "--lab", lab.name))
    assert str(lab.paths.manifest) in line and str(lab.paths.values) in line, line
    assert f"ciphermesh lab up --name {lab.name} --nodes 2" in line, line
    up = run_cli(*UP_ETCD, "--name", lab.name, *UP)
    assert up.returncode == 0, up.stderr
    assert "nothing was missing" in up.stderr, up.stderr
    assert lab.paths.values.read_text() == values
    assert run_cli("status", "--lab", lab.name).returncode == 0


def test_lab_up_brings_back_a_dead_etcd_operator_and_agent_keeping_the_key(lab: LabInfo) -> None:
    key = _key(lab)
    kept = agent_pid(lab, "node-1")
    etcd = read_record(lab.paths.root)
    operator = read_pidfile(lab.paths.pids / "operator.pid")
    lost = agent_pid(lab, "node-2")
    assert etcd is not None and operator is not None and lost is not None and kept is not None
    for pid in (etcd.pid, operator, lost):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not any(pid_alive(pid) for pid in (etcd.pid, operator, lost)), 5.0, "all three dead")

    line = error_line(run_cli(*UP_ETCD, "--name", lab.name, "--nodes", "3", *IPSEC))
    assert "other settings" in line and "--nodes 3" in line, line
    assert running_etcd(lab.paths.root) is None

    up = run_cli(*UP_ETCD, "--name", lab.name, *UP)
    assert up.returncode == 0, up.stderr
    assert "restarted etcd, the agent of node-2, the operator" in up.stderr, up.stderr
    assert agent_pid(lab, "node-1") == kept
    wait_ready(lab, READY_TIMEOUT)
    assert _key(lab) == key
    again = run_cli(*UP_ETCD, "--name", lab.name, *UP)
    assert again.returncode == 0 and "nothing was missing" in again.stderr, again.stderr


def test_lab_down_without_its_state_dir_stops_everything(lab: LabInfo) -> None:
    etcd = running_etcd(lab.paths.root)
    operator = read_pidfile(lab.paths.pids / "operator.pid")
    assert etcd is not None and operator is not None
    daemons = {etcd.pid, operator, *(agent_pid(lab, node) for node in lab.nodes)}
    assert set(marked_pids(lab.paths.marker)) >= daemons
    shutil.rmtree(lab.paths.root)

    assert "state directory" in error_line(run_cli("status", "--lab", lab.name))
    assert "left things behind" in error_line(run_cli(*UP_ETCD, "--name", lab.name, *UP))
    down = run_cli("lab", "down", "--name", lab.name)
    assert down.returncode == 0 and down.stdout == f"lab {lab.name} is down\n", down.stderr
    assert not [pid for pid in daemons if pid_alive(pid)]
    assert not marked_pids(lab.paths.marker)
    assert not netns.lab_residue(lab.name)
