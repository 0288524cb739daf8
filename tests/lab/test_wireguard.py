"""A real 3-node lab with encryption.type=wireguard: cilium_wg0 on every node, pod traffic only as
WireGuard on UDP 51871 between node IPs, status as Cilium shows it, and a key that outlives the agent."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from ciphermesh.agent.wireguard_key import KEY_FILENAME
from ciphermesh.lab.cluster import agent_pid, connect, start_agent, wait_ready
from ciphermesh.lab.processes import pid_alive, start_daemon
from ciphermesh.lab.wire_verdict import tunnel_pairs
from ciphermesh.wireguard.keys import PrivateKey
from tests.support.lab import (
    NODES,
    READY_TIMEOUT,
    Lab,
    UnderlayCapture,
    analyse,
    cli_json,
    ip_json,
    lab_with_pods,
    node_entries,
    pod_cidrs,
    reach_all,
    replies,
    run_cli,
)
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.timeout(240),
]

WIREGUARD = ("--set", "encryption.enabled=true", "--set", "encryption.type=wireguard")


@dataclass(frozen=True)
class WgLab(Lab):
    def key_file(self, node: str) -> Path:
        return self.info.paths.node_dir(node) / KEY_FILENAME


@pytest.fixture(scope="module")
def lab() -> Iterator[WgLab]:
    with lab_with_pods("wg" + secrets.token_hex(2), *WIREGUARD) as (info, pods):
        yield WgLab(info, pods)


@pytest.fixture
def ready_lab(lab: WgLab) -> WgLab:
    wait_ready(lab.info, READY_TIMEOUT)
    reach_all(list(lab.pods.values()), timeout=10.0)
    return lab


def _published_keys(lab: WgLab) -> dict[str, str | None]:
    with connect(lab.info) as store:
        return {v.value.name: v.value.wg_pub_key for v in store.list_nodes()}


def test_cilium_wg0_keys_and_status(ready_lab: WgLab) -> None:
    lab = ready_lab
    published = _published_keys(lab)
    for node in NODES:
        path = lab.key_file(node)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        raw = path.read_bytes()
        assert len(raw) == 32
        assert published[node] == PrivateKey(raw).public_key().to_base64()
        links = ip_json(lab.info.netns_of(node), "link", "show")
        (link,) = [li for li in links if li["ifname"] == "cilium_wg0"]
        assert link["mtu"] == 1420 and "UP" in link["flags"]
    assert len(set(published.values())) == 3

    statuses = node_entries(lab.name)
    for node in statuses.values():
        assert node["encryption"] == {"mode": "wireguard", "engine": "userspace", "keyID": None}
        assert node["publicKey"] == published[node["name"]]
        assert node["errors"] == [] and node["health"]["reachable"] == 2

    encryption = cli_json("encryption", "status", "--lab", lab.name)
    assert encryption["summary"]["mode"] == "wireguard"
    assert encryption["summary"]["rotationInProgress"] is False
    for entry in encryption["nodes"]:
        assert (entry["interface"], entry["listenPort"], entry["peerCount"]) == ("cilium_wg0", 51871, 2)
        assert entry["publicKey"] == published[entry["name"]]
        others = {published[n] for n in NODES if n != entry["name"]}
        assert {peer["publicKey"] for peer in entry["peers"]} == others
        for peer in entry["peers"]:
            assert peer["endpoint"].endswith(":51871")
            assert peer["latestHandshake"] > 0 and peer["rxBytes"] > 0 and peer["txBytes"] > 0, peer
        assert entry["errorCount"] == 0, entry["errors"]
        assert isinstance(entry["drops"], dict)

    table = run_cli("encryption", "status", "--lab", lab.name)
    assert table.returncode == 0, table.stderr
    first = table.stdout.splitlines()[0]
    assert first == "Encryption: Wireguard (3/3 nodes) [NodeEncryption: Disabled]", table.stdout
    assert table.stdout.count("Interface: cilium_wg0") == 3
    assert table.stdout.count("Number of peers: 2") == 3
    # Every peer whole, as `wg show` prints it: its pod CIDR and node IP among the allowed IPs.
    allowed = [line.strip() for line in table.stdout.splitlines() if line.strip().startswith("allowed ips: ")]
    assert len(allowed) == 6
    for line in allowed:
        pod_cidr, node_ip = sorted(line.removeprefix("allowed ips: ").split(", "))
        assert re.fullmatch(r"10\.0\.\d+\.0/24", pod_cidr), line
        assert re.fullmatch(r"172\.\d+\.0\.\d+/32", node_ip), line


def test_pod_traffic_is_only_wireguard_between_every_node_pair(ready_lab: WgLab, tmp_path: Path) -> None:
    lab = ready_lab
    with UnderlayCapture(lab.name, tmp_path / "underlay.pcap") as capture:
        reach_all(list(lab.pods.values()), timeout=5.0)
        report = analyse(capture, pod_cidrs(lab.name))
    assert report.plaintext_count == 0, report.plaintext_samples
    assert report.esp == 0
    node_ips = [lab.info.node_ips[node] for node in NODES]
    missing = [pair for pair in tunnel_pairs(node_ips) if report.wireguard_pairs[pair] == 0]
    assert missing == [], report.wireguard_pairs
    assert set(report.wireguard_pairs) <= set(tunnel_pairs(node_ips))


def test_connectivity_test_checks_wireguard(ready_lab: WgLab) -> None:
    # tcpdump on this shared 2-CPU machine sometimes drops a few packets, which rightly fails the
    # verdict (the capture proves no absence then); such a run, and only such a run, is repeated once.
    for _ in range(2):
        result = run_cli("connectivity", "test", "--lab", ready_lab.name, "-o", "json", timeout=180)
        report = json.loads(result.stdout) if result.stdout.startswith("{") else {}
        reasons = report.get("verdict", {}).get("reasons", [])
        if not reasons or not all(r.startswith("the capture is incomplete") for r in reasons):
            break
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["mode"] == "wireguard" and report["verdict"] == {"passed": True, "reasons": []}
    assert "node pairs with WireGuard: 6/6" in report["summary"]
    assert report["wire"]["plaintext"] == 0 and report["wire"]["markersSeen"] == []


def test_agent_restart_keeps_the_public_key(ready_lab: WgLab) -> None:
    lab = ready_lab
    before = _published_keys(lab)
    boot = node_entries(lab.name)["node-2"]["bootID"]
    pid = agent_pid(lab.info, "node-2")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 5.0, "the SIGKILLed agent ends")
    start_agent(lab.info, "node-2")
    wait_ready(lab.info, READY_TIMEOUT)
    assert node_entries(lab.name)["node-2"]["bootID"] != boot
    assert _published_keys(lab) == before
    assert stat.S_IMODE(lab.key_file("node-2").stat().st_mode) == 0o600
    reach_all(list(lab.pods.values()), timeout=15.0)
    encryption = cli_json("encryption", "status", "--lab", lab.name)
    for entry in encryption["nodes"]:
        assert entry["publicKey"] == before[entry["name"]]
        assert {p["publicKey"] for p in entry["peers"]} == {before[n] for n in NODES if n != entry["name"]}


def test_a_record_stripped_of_its_public_key_gets_it_back(ready_lab: WgLab, tmp_path: Path) -> None:
    lab = ready_lab
    key = _published_keys(lab)["node-3"]
    assert key is not None
    with UnderlayCapture(lab.name, tmp_path / "stripped.pcap") as capture:
        # As a hand edit (or Cilium's #25492) would leave it: peers hold node-3 until the key is back.
        with connect(lab.info) as store:
            store.update_node("node-3", lambda node: replace(node, annotations={}))
        start = time.monotonic()
        wait_until(lambda: _published_keys(lab)["node-3"] == key, 10.0, "node-3's key published again")
        took = time.monotonic() - start
        print(f"public key back in the record after {took:.2f} s")
        reach_all(list(lab.pods.values()), timeout=10.0)
        report = analyse(capture, pod_cidrs(lab.name))
    assert report.plaintext_count == 0, report.plaintext_samples
    log = lab.info.paths.logs / "agent-node-3.log"
    assert "publishing ours again" in log.read_text()


def _peer_keys(lab: WgLab, node: str) -> set[str]:
    entry = next(e for e in cli_json("encryption", "status", "--lab", lab.name)["nodes"] if e["name"] == node)
    return {peer["publicKey"] for peer in entry["peers"]}


def test_peers_follow_nodes_leaving_and_coming_back(ready_lab: WgLab) -> None:
    lab = ready_lab
    keys = _published_keys(lab)
    pid = agent_pid(lab.info, "node-3")
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pid_alive(pid), 10.0, "the agent of node-3 stops")
    # A clean stop revokes node-3's record: the others drop it as a WireGuard peer.
    wait_until(lambda: _peer_keys(lab, "node-1") == {keys["node-2"]}, 15.0, "node-1 drops node-3")
    start_agent(lab.info, "node-3")
    wait_ready(lab.info, READY_TIMEOUT)
    wait_until(lambda: _peer_keys(lab, "node-1") == {keys["node-2"], keys["node-3"]}, 15.0,
               "node-1 has node-3 back")
    reach_all(list(lab.pods.values()), timeout=15.0)


def _restart_agent_as_ipsec(lab: WgLab, node: str) -> None:
    """The node's agent replaced by one with encryption.type=ipsec, as on a misconfigured node."""
    pid = agent_pid(lab.info, node)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 5.0, f"the agent of {node} ends")
    paths = lab.info.paths
    argv = [sys.executable, "-m", "ciphermesh", "agent", "--store", lab.info.store, "--cluster", lab.name,
            "-f", str(paths.values), "--set", "encryption.type=ipsec", "--node", node,
            "--node-ip", lab.info.node_ips[node], "--status-socket", str(paths.agent_socket(node)),
            "--state-dir", str(paths.node_dir(node))]
    start_daemon(argv, pidfile=paths.pids / f"agent-{node}.pid", log=paths.logs / f"agent-{node}.log",
                 netns=lab.info.netns_of(node))


def _waiting(lab: WgLab, node: str) -> list[str]:
    return list(node_entries(lab.name)[node]["waiting"])


def test_a_node_in_another_mode_is_refused_without_plaintext(ready_lab: WgLab, tmp_path: Path) -> None:
    lab = ready_lab
    a, c = lab.pods["node-1"], lab.pods["node-3"]
    _restart_agent_as_ipsec(lab, "node-3")
    mismatch = "node-3: runs encryption mode ipsec, this node wireguard"
    wait_until(lambda: any(w.startswith(mismatch) for w in _waiting(lab, "node-1")), 20.0,
               "node-1 names node-3's mode")
    wait_until(lambda: any(w.startswith("node-1: runs encryption mode wireguard, this node ipsec")
                           for w in _waiting(lab, "node-3")), 20.0, "node-3 names node-1's mode")
    with UnderlayCapture(lab.name, tmp_path / "mismatch.pcap") as capture:
        assert replies(a, c.ip, 3) == 0
        assert replies(c, a.ip, 3) == 0
        report = analyse(capture, pod_cidrs(lab.name))
    assert report.plaintext_count == 0, report.plaintext_samples
    pid = agent_pid(lab.info, "node-3")
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pid_alive(pid), 10.0, "the IPsec agent of node-3 stops")
    start_agent(lab.info, "node-3")
    wait_ready(lab.info, READY_TIMEOUT)
    reach_all(list(lab.pods.values()), timeout=15.0)
