"""The health endpoint and the probes, on loopback inside a namespace of the test's own."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

SCRIPT = r"""
import subprocess
from ciphermesh.agent.health import HealthServer, HealthProber, probe_http, probe_icmp
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["ip", "addr", "add", "10.99.0.1/32", "dev", "lo"], check=True)
server = HealthServer("10.99.0.1", 4240)
server.start()
assert probe_http("10.99.0.1") is not None
assert probe_http("10.99.0.1", port=4241, timeout=0.5) is None
assert probe_icmp("10.99.0.1", timeout=1.0) is not None
assert probe_icmp("10.99.0.9", timeout=0.3) is None
prober = HealthProber(lambda: [("self", "10.99.0.1"), ("ghost", "10.99.0.9")], interval=60)
prober.probe_all()
by_node = {r.node: r for r in prober.results()}
assert by_node["self"].reachable and not by_node["ghost"].reachable, by_node
assert by_node["ghost"].as_dict()["reachable"] is False
server.stop()
assert probe_http("10.99.0.1", timeout=0.5) is None
print("ok")
"""


@pytest.mark.netns
def test_health_endpoint_and_probes() -> None:
    netns = f"cmhe{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        result = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c", SCRIPT],
            check=False, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "ok"
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
