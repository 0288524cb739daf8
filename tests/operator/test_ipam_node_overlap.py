"""Issue 10 item 4: a pod CIDR pool over the node network, refused by `lab up` at once and by the agent."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ciphermesh.agent.status_socket import query_status
from ciphermesh.lab import netns
from ciphermesh.lab.processes import start_daemon, stop_daemon
from ciphermesh.lab.state import LAB_ROOT_ENV
from ciphermesh.store.etcd.process import start_etcd, stop_etcd
from tests.support.lab import UP_ETCD
from tests.support.netns import built_lab

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

POOL = "ipam.operator.clusterPoolIPv4PodCIDRList"


def test_lab_up_refuses_a_pool_over_every_node_network_at_once(tmp_path: Path) -> None:
    env = {**os.environ, LAB_ROOT_ENV: str(tmp_path)}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "ciphermesh", *UP_ETCD, "--lab", "qcover", "--nodes", "1",
         "--set", f"{POOL}={{172.16.0.0/12}}"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )
    took = time.monotonic() - started
    assert result.returncode == 1 and result.stdout == ""
    refusal = ("ciphermesh: the pod CIDR pool 172.16.0.0/12 overlaps the node network 172.18.0.0/24 and "
               "every other node network the lab can use ")
    assert result.stderr.startswith(refusal), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert took < 10, f"refused after {took:.1f} s"
    # Nothing was built: no state, no namespace, no process.
    assert not (tmp_path / "qcover").exists()
    assert not netns.lab_residue("qcover").namespaces


def _status(socket: Path) -> dict[str, Any] | None:
    try:
        return query_status(socket, timeout=1.0)
    except (OSError, ValueError):
        return None


def test_the_agent_refuses_a_pod_cidr_on_its_node_network(tmp_path: Path) -> None:
    """An operator handing out the node network (as a hand-run cluster can): one clear line, no links."""
    with built_lab(1, "qcov" + os.urandom(2).hex()) as plan:
        node = plan.nodes[0]
        values = tmp_path / "values.yaml"
        pool = plan.subnet.supernet(8)
        values.write_text(f"ipam:\n  operator:\n    clusterPoolIPv4PodCIDRList: ['{pool}']\n")
        etcd = start_etcd(tmp_path)
        common = ["--store", etcd.client_url, "--cluster", "qcov", "-f", str(values)]
        socket = tmp_path / "agent.sock"
        agent_pid, operator_pid = tmp_path / "agent.pid", tmp_path / "operator.pid"
        try:
            start_daemon([sys.executable, "-m", "ciphermesh", "agent", *common, "--node", node.name,
                          "--node-ip", str(node.ip), "--status-socket", str(socket),
                          "--state-dir", str(tmp_path / "state")],
                         pidfile=agent_pid, log=tmp_path / "agent.log", netns=node.netns)
            start_daemon([sys.executable, "-m", "ciphermesh", "operator", *common],
                         pidfile=operator_pid, log=tmp_path / "operator.log")
            deadline = time.monotonic() + 30
            while (status := _status(socket)) is None or status["agent"] != "refused its pod CIDR":
                assert time.monotonic() < deadline, (status, (tmp_path / "agent.log").read_text()[-2000:])
                time.sleep(0.2)
            assert status["podCIDRs"] == [] and status["routerIP"] is None
            (error,) = status["errors"]
            assert error.startswith(f"pod CIDR {pool[0]}/24 refused: it overlaps the node "
                                    f"network {plan.subnet} of node IP {node.ip}; "), error
            links = netns.run(node.netns, ["ip", "-o", "link", "show"]).stdout
            assert "cilium_host" not in links and "cilium_vxlan" not in links
        finally:
            stop_daemon(operator_pid)
            stop_daemon(agent_pid)
            stop_etcd(tmp_path)
