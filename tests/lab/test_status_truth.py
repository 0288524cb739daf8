"""Issue 10 items 4, 5 and 7 on one real lab: status that tells the truth about silent agents, a killed
operator and a dead etcd; pod commands that cannot run; a pool over the usual node network."""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import signal
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from ciphermesh.cli.main import main
from ciphermesh.lab.cluster import LabInfo, agent_pid, load_lab
from ciphermesh.lab.processes import pid_alive, read_pidfile
from ciphermesh.store.etcd.process import read_record
from tests.support.lab import (
    IPSEC,
    cli_json,
    lab_guard,
    run_cli,
)
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.timeout(180),
]

# Over Kind's (and the lab's usual) node network 172.18.0.0/24: the lab must pick another one.
POOL = IPv4Network("172.18.0.0/16")


@pytest.fixture(scope="module")
def lab() -> Iterator[LabInfo]:
    name = "qc" + secrets.token_hex(2)
    with lab_guard(name):
        up = run_cli("lab", "up", "--control-plane", "etcd", "--lab", name, "--nodes", "2", *IPSEC,
                     "--set", f"ipam.operator.clusterPoolIPv4PodCIDRList={{{POOL}}}")
        assert up.returncode == 0, up.stderr
        yield load_lab(name)


def _cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
    """`ciphermesh ARGS` through main() in this process (a traceback would fail the test): code, out, err."""
    out, err, saved = io.StringIO(), io.StringIO(), sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        sys.stdin = saved
    return code, out.getvalue(), err.getvalue()


def _kill(pid: int, sig: signal.Signals) -> None:
    os.kill(pid, sig)
    wait_until(lambda: not pid_alive(pid), 10.0, f"pid {pid} gone")


def test_a_pool_over_the_usual_node_network_moves_the_node_network(lab: LabInfo) -> None:
    assert not IPv4Network(lab.subnet).overlaps(POOL), lab.subnet
    for node in cli_json("status", "--lab", lab.name)["nodes"]:
        assert IPv4Address(node["nodeIP"]) in IPv4Network(lab.subnet)
        assert all(IPv4Network(cidr).subnet_of(POOL) for cidr in node["podCIDRs"]), node


def test_lab_commands_take_lab_as_every_command_does(lab: LabInfo) -> None:
    for option in ("--lab", "--name"):
        result = run_cli("lab", "exec", option, lab.name, "node-1", "--", "ip", "-o", "link", "show", "eth0")
        assert result.returncode == 0 and "eth0" in result.stdout, result.stderr


def test_a_pod_whose_command_cannot_run_is_not_created(lab: LabInfo) -> None:
    result = _cli("lab", "pod", "run", "p", "--lab", lab.name, "--node", "node-1", "--", "/nonexistent")
    assert result == (1, "", "ciphermesh: pod p not created: its command '/nonexistent' cannot be run "
                             "(no such file, nor a command on PATH)\n")
    assert cli_json("lab", "pod", "list", "--lab", lab.name)["pods"] == []


def test_a_stopped_agent_is_unknown_and_its_peer_keeps_its_numbers(lab: LabInfo) -> None:
    pid = agent_pid(lab, "node-2")
    assert pid is not None
    wait_until(lambda: cli_json("encryption", "status", "--lab", lab.name)["nodes"][0]["maxSeq"] > 0, 30.0,
               "node-1 sending ESP")
    os.kill(pid, signal.SIGSTOP)
    try:
        status = cli_json("encryption", "status", "--lab", lab.name)
        node1, node2 = status["nodes"]
        assert (node1["mode"], node1["keysInUse"]) == ("ipsec", 2) and node1["maxSeq"] > 0, node1
        assert (node2["mode"], node2["agent"], node2["keysInUse"], node2["maxSeq"]) == (
            "unknown", "not answering", None, None), node2
        summary = status["summary"]
        assert summary["mode"] == "ipsec" and summary["notAnswering"] == ["node-2"]
        assert summary["keysInUse"] == [2] and summary["rotationInProgress"] is False
        assert summary["maxSeq"] == node1["maxSeq"]
        text = _cli("encryption", "status", "--lab", lab.name)[1]
        assert "Encryption: IPsec (1/2 nodes; not answering: node-2)" in text, text
        assert "IPsec keys in use: 2 on 1/2" in text
        # Once its lease expires the record is gone too: still unknown, never another mode.
        wait_until(lambda: cli_json("status", "--lab", lab.name)["nodes"][1]["agent"] == "absent", 30.0,
                   "node-2's record expired")
        status = cli_json("encryption", "status", "--lab", lab.name)
        assert status["nodes"][1]["mode"] == "unknown" and status["summary"]["mode"] == "ipsec", status
        assert cli_json("status", "--lab", lab.name)["nodes"][1]["encryption"]["mode"] == "unknown"
    finally:
        os.kill(pid, signal.SIGCONT)


def test_status_wait_returns_once_settled_and_names_a_stopped_agent_at_its_deadline(lab: LabInfo) -> None:
    code, out, err = _cli("status", "--lab", lab.name, "--wait", "--wait-duration", "60s", "-o", "json")
    assert code == 0, err
    assert all(node["agent"] == "ready" for node in json.loads(out)["nodes"])
    pid = agent_pid(lab, "node-2")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        code, _, err = _cli("status", "--lab", lab.name, "--wait", "--wait-duration", "2s")
        assert code != 0 and "not ready after 2 s: node-2: agent not answering" in err, err
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: _cli("status", "--lab", lab.name, "--wait", "--wait-duration", "30s")[0] == 0, 60.0,
               "node-2 answering again")


def test_a_killed_operator_is_not_running_at_once(lab: LabInfo) -> None:
    pid = read_pidfile(lab.paths.pids / "operator.pid")
    assert pid is not None
    assert cli_json("status", "--lab", lab.name)["operator"]["running"] is True
    _kill(pid, signal.SIGKILL)
    # Its lease record outlives it by the TTL (10 s): status must not read that as running.
    assert cli_json("status", "--lab", lab.name)["operator"] == {"running": False, "ids": []}
    assert "Operator: not running" in _cli("status", "--lab", lab.name)[1]


def test_a_dead_etcd_is_named_once_by_every_command(lab: LabInfo) -> None:
    record = read_record(lab.paths.root)
    assert record is not None
    _kill(record.pid, signal.SIGKILL)
    expected = f"ciphermesh: lab {lab.name}: its etcd is not running; "
    # `sa list` asks the agents what their engines hold: it needs no store, and keeps working.
    code, out, _err = _cli("encryption", "sa", "list", "--lab", lab.name, stdin="")
    assert code == 0 and "<redacted>" in out, out
    for command in (("status",), ("encryption", "status"),
                    ("encryption", "key", "show"), ("encryption", "key", "rotate"),
                    ("encryption", "key", "set", "-")):
        code, out, err = _cli(*command, "--lab", lab.name, stdin=f"4+ rfc4106(gcm(aes)) {'ab' * 20} 128\n")
        assert (code, out) == (1, ""), (command, out)
        (line,) = err.splitlines()
        assert line.replace("key not rotated: ", "").startswith(expected), (command, line)
        assert line.count(f"lab {lab.name}:") == 1, line
