"""Issue 4: an agent restarted in the middle of a rotation; the cluster converges and traffic recovers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from ciphermesh.lab.cluster import agent_pid, agent_status, connect, start_agent
from ciphermesh.lab.processes import pid_alive
from ciphermesh.lab.rotation_progress import follow_rotation
from tests.support.rotation import PING_TAIL_ALLOWANCE, assert_no_loss, ping_mesh, rotation_lab
from tests.support.wait import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

GRACE_SECONDS = 8
RESTARTED = "node-2"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_an_agent_restarted_mid_rotation_converges(tmp_path: Path, signum: signal.Signals) -> None:
    with rotation_lab(tmp_path, sets=(f"encryption.ipsec.keyRotationDuration={GRACE_SECONDS}s",)) as lab:
        info = lab.info
        before = agent_status(info, RESTARTED)
        assert before is not None
        with ping_mesh(lab) as mesh:
            time.sleep(2)
            key_id = lab.rotate()
            under_way = follow_rotation(info, key_id, start=time.monotonic(), timeout=30, poll=0.1,
                                        until=lambda progress: progress.all_sending)
            # Mid-rotation: everyone sends with the new key, the old one is still held (grace period).
            assert under_way.sending is not None and not under_way.last.settled, under_way.last.describe()
            pid = agent_pid(info, RESTARTED)
            assert pid is not None
            killed_at = time.time()
            os.kill(pid, signum)
            wait_until(lambda: not pid_alive(pid), 15, f"{RESTARTED}'s agent to exit", interval=0.05)
            start_agent(info, RESTARTED)
            timeline = lab.wait_settled(key_id)
            converged_at = time.time()
            time.sleep(3)
            pings = mesh.stop()
        after = agent_status(info, RESTARTED)
        with connect(info) as store:
            records = {v.value.name: v.value for v in store.list_nodes()}
        status = lab.encryption_status()

    for result in pings.values():
        print(result.summary())
    print(f"{signum.name}: converged {converged_at - killed_at:.2f} s after the kill "
          f"(settled {timeline.settled:.2f} s after the restart)")

    assert after is not None and after["bootID"] != before["bootID"]
    assert records[RESTARTED].boot_id == after["bootID"]
    others = [(a, b) for a, b in pings if "p2" not in (a, b)]
    assert_no_loss(pings, others)
    for (src, dst), result in pings.items():
        if (src, dst) in others:
            continue
        # Loss is expected while the agent is away; none once the cluster has converged.
        recovered = [seq for seq, at in result.replies.items() if at >= converged_at]
        assert recovered, f"no reply after convergence: {result.summary()}"
        assert all(seq < min(recovered) for seq in result.lost), result.summary()
        assert result.unanswered_tail <= PING_TAIL_ALLOWANCE, result.summary()
    peers = len(info.nodes) - 1
    for node in status["nodes"]:
        assert (node["keyID"], node["keysInUse"], node["rotationInProgress"]) == (key_id, 2 * peers, False)
        assert node["problems"] == [], node
