"""Issue 10.2 as it was found: etcd killed and restarted, then an agent stopped for longer than its lease.

The stopped node's record expires, its peer drops it and adds it again when it comes back with the same
boot ID and keys. The peer's outbound SA used to start at sequence 1 while the stopped node kept its
replay window: every packet a replay, for as long as the SA had been up. Now traffic is back within
seconds of SIGCONT, the receiver counts no replays, and nothing crosses the underlay in plaintext.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from ciphermesh.lab import netns
from ciphermesh.lab.cluster import agent_pid, agent_status, load_lab, wait_ready
from ciphermesh.lab.pod_registry import get_pod
from ciphermesh.store.base import DEFAULT_NODE_TTL
from ciphermesh.store.etcd.process import start_etcd, stop_etcd
from tests.support.lab import (
    IPSEC,
    READY_TIMEOUT,
    BackgroundPing,
    UnderlayCapture,
    analyse,
    lab_guard,
    pod_cidrs,
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

STOPPED_SECONDS = DEFAULT_NODE_TTL + 5
RECOVERY_SECONDS = 8.0
REPLAY_DROPS = ("XfrmInStateSeqError", "XfrmInStateProtoError")


def _engine(status: dict[str, Any] | None) -> dict[str, Any]:
    assert status is not None
    engine = status["encryption"]["engineStatus"]
    assert engine is not None
    return dict(engine)


def _replay_drops(engine: dict[str, Any]) -> int:
    return sum(int(engine["errors"].get(name, 0)) for name in REPLAY_DROPS)


def test_an_agent_stopped_past_its_lease_gets_traffic_back_at_once(tmp_path: Path) -> None:
    name = unique_lab("lf")
    with lab_guard(name):
        up = run_cli("lab", "up", "--control-plane", "etcd", "--name", name, "--nodes", "2", *IPSEC)
        assert up.returncode == 0, up.stderr
        info = load_lab(name)
        for pod, node in (("a", "node-1"), ("b", "node-2")):
            created = run_cli("lab", "pod", "run", pod, "--name", name, "--node", node)
            assert created.returncode == 0, created.stderr
        a, b = get_pod(info, "a"), get_pod(info, "b")
        root = info.paths.root
        assert stop_etcd(root)
        assert start_etcd(root).client_url == info.store
        wait_ready(info, READY_TIMEOUT)
        stopped = agent_pid(info, "node-1")
        assert stopped is not None
        with UnderlayCapture(name, tmp_path / "underlay.pcap") as capture:
            to_a = BackgroundPing(b, a.ip, tmp_path / "b_to_a.txt")
            to_b = BackgroundPing(a, b.ip, tmp_path / "a_to_b.txt")
            try:
                wait_until(lambda: bool(to_a.replies() and to_b.replies()), 10.0, "both pings answered")
                # Age the SAs past the 1024-packet replay window in a few seconds.
                netns.run(b.netns, ["ping", "-n", "-q", "-c", "1500", "-i", "0.002", "-W", "1", a.ip])
                assert _engine(agent_status(info, "node-2"))["peers"][0]["outSeq"] > 1500
                before = _replay_drops(_engine(agent_status(info, "node-1")))
                os.kill(stopped, signal.SIGSTOP)
                try:
                    # node-1's lease runs out: node-2 drops it, SAs and all.
                    wait_until(lambda: not _engine(agent_status(info, "node-2"))["peers"], STOPPED_SECONDS,
                               "node-2 forgets node-1")
                    time.sleep(max(0.0, STOPPED_SECONDS - DEFAULT_NODE_TTL))  # the stop, not a check
                finally:
                    os.kill(stopped, signal.SIGCONT)
                resumed = time.time()
                flows = (to_a, to_b)
                wait_until(lambda: all(max(f.replies(), default=0) > resumed for f in flows),
                           RECOVERY_SECONDS, "both pings answered again after SIGCONT")
                print(f"traffic back {time.time() - resumed:.1f} s after SIGCONT")
                wait_until(lambda: _engine(agent_status(info, "node-2"))["peers"] != [], 5.0,
                           "node-2 holds node-1 again")
            finally:
                to_a.stop()
                to_b.stop()
            report = analyse(capture, pod_cidrs(name))
        after = _engine(agent_status(info, "node-1"))
        assert _replay_drops(after) == before, after["errors"]
        assert report.plaintext_count == 0, report.plaintext_samples
        assert report.esp > 0
