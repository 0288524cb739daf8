"""One real 3-node IPsec lab, then faults: an agent SIGKILLed mid-traffic, etcd restarted, an agent
SIGTERMed, a node's datapath damaged as a crash mid-apply leaves it, bad input against the running lab.

Each test leaves the lab as it found it (every agent ready, every pod reaching every other), so they
share one lab; each starts by checking that.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from ciphermesh.datapath.netlink.links import vtep_mac
from ciphermesh.keys import generate_line
from ciphermesh.keys.generate import next_key_id
from ciphermesh.lab import netns
from ciphermesh.lab.cluster import (
    agent_pid,
    agent_status,
    connect,
    lab_log,
    start_agent,
    wait_ready,
)
from ciphermesh.lab.processes import pid_alive
from ciphermesh.store.etcd.process import running_etcd, start_etcd, stop_etcd
from tests.support.lab import (
    IPSEC,
    NODES,
    READY_TIMEOUT,
    BackgroundPing,
    Lab,
    UnderlayCapture,
    analyse,
    cli_json,
    error_line,
    ip_json,
    lab_with_pods,
    node_entries,
    ping,
    pod_cidrs,
    reach_all,
    replies,
    run_cli,
    wait_for_line,
)
from tests.support.names import unique_lab
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.timeout(180),
]

SECRET = "cilium-ipsec-keys"
ENGINE_TUN = "cm_ipsec"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with lab_with_pods(unique_lab("lf"), *IPSEC) as (info, pods):
        yield Lab(info, pods)


@pytest.fixture
def ready_lab(lab: Lab) -> Lab:
    """The shared lab, checked whole before a test breaks something in it."""
    wait_ready(lab.info, READY_TIMEOUT)
    return lab


def _router_ips(lab: Lab) -> dict[str, str]:
    return {name: node["routerIP"] for name, node in node_entries(lab.name).items()}


def _tun_present(lab: Lab, node: str) -> bool:
    return any(link["ifname"] == ENGINE_TUN for link in ip_json(lab.info.netns_of(node), "link", "show"))


def _kill(pid: int, signum: signal.Signals, timeout: float) -> float:
    os.kill(pid, signum)
    start = time.monotonic()
    wait_until(lambda: not pid_alive(pid), timeout, f"pid {pid} ends after {signum.name}")
    return time.monotonic() - start


def test_up_reports_contract_fields_and_esp_is_on_the_wire(ready_lab: Lab) -> None:
    lab = ready_lab
    status = cli_json("status", "--lab", lab.name)
    nodes = status["nodes"]
    assert [node["name"] for node in nodes] == list(NODES)
    subnet = IPv4Network(lab.info.subnet)
    cidrs = set()
    for node in nodes:
        assert node["agent"] == "ready", node
        assert node["encryption"] == {"mode": "ipsec", "engine": "userspace", "keyID": 3}
        assert node["nodeIP"] == lab.info.node_ips[node["name"]]
        assert IPv4Address(node["nodeIP"]) in subnet
        (cidr,) = (IPv4Network(text) for text in node["podCIDRs"])
        assert cidr.prefixlen == 24 and cidr.subnet_of(IPv4Network("10.0.0.0/8"))
        assert IPv4Address(node["routerIP"]) == next(cidr.hosts())
        assert uuid.UUID(node["bootID"])
        cidrs.add(cidr)
        assert node["errors"] == []
        assert node["health"]["reachable"] == 2
    assert len(cidrs) == 3
    assert len({node["bootID"] for node in nodes}) == 3
    assert status["clusterHealth"] == {"reachable": 3, "total": 3}
    assert status["operator"]["running"]

    encryption = cli_json("encryption", "status", "--lab", lab.name)
    for node in encryption["nodes"]:
        assert (node["mode"], node["keyID"], node["keysInUse"]) == ("ipsec", 3, 4), node
        assert node["rotationInProgress"] is False
        assert not any(node["errors"].values()), node["errors"]
        assert node["maxSeq"] > 0
    summary = encryption["summary"]
    assert (summary["mode"], summary["nodes"], summary["keysInUse"]) == ("ipsec", 3, [4])
    assert summary["expectedKeyCount"] == 4 and summary["errorCount"] == 0

    reach_all(lab.all_pods(), timeout=5.0)

    tcpdump = subprocess.Popen(
        [sys.executable, "-m", "ciphermesh", "lab", "exec", "--name", lab.name, "node-1", "--",
         "tcpdump", "-n", "-i", "cilium_vxlan", "-c", "2", "esp"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        wait_for_line(tcpdump, b"listening on", 10.0)
        assert ping(lab.pods["node-1"], lab.pods["node-2"].ip, count=2)
        out, _ = tcpdump.communicate(timeout=10)
    finally:
        if tcpdump.poll() is None:
            tcpdump.kill()
            tcpdump.communicate()
    assert tcpdump.returncode == 0
    lines = out.decode().splitlines()
    assert len(lines) == 2, lines
    routers = set(_router_ips(lab).values())
    for line in lines:
        assert "ESP(spi=0x00000003," in line, line
        match = re.search(r" IP (\S+) > (\S+): ESP", line)
        assert match and {match.group(1), match.group(2).rstrip(":")} <= routers, line


def test_sigkilled_agent_fails_closed_and_recovers_on_restart(ready_lab: Lab, tmp_path: Path) -> None:
    lab = ready_lab
    a, b = lab.pods["node-1"], lab.pods["node-2"]
    routers = _router_ips(lab)
    old_boot = node_entries(lab.name)["node-2"]["bootID"]
    pid = agent_pid(lab.info, "node-2")
    assert pid is not None
    with UnderlayCapture(lab.name, tmp_path / "outage.pcap") as capture:
        a_to_b = BackgroundPing(a, b.ip, tmp_path / "a_to_b.txt")
        b_to_a = BackgroundPing(b, a.ip, tmp_path / "b_to_a.txt")
        try:
            wait_until(lambda: bool(a_to_b.replies() and b_to_a.replies()), 10.0, "both pings answered")
            _kill(pid, signal.SIGKILL, 5.0)
            killed_at = time.time()
            # The TUN goes with the engine's fd (the kernel unregisters it just after the exit): what was
            # routed into it then meets `unreachable`.
            wait_until(lambda: not _tun_present(lab, "node-2"), 5.0, "node-2's TUN gone")
            assert agent_status(lab.info, "node-2") is None
            assert replies(a, b.ip, 3) == 0
            assert replies(b, a.ip, 3) == 0
            assert replies(lab.pods["node-3"], b.ip, 2) == 0
            restarted_at = time.time()
            start_agent(lab.info, "node-2")
            wait_ready(lab.info, READY_TIMEOUT)
            reach_all(lab.all_pods())
            # The pings that ran all along get answers again: nobody restarted them.
            flows = (a_to_b, b_to_a)
            wait_until(lambda: all(max(flow.replies(), default=0) > restarted_at for flow in flows), 10.0,
                       "the running pings answered again")
        finally:
            received = {"a->b": a_to_b.stop(), "b->a": b_to_a.stop()}
        report = analyse(capture, pod_cidrs(lab.name))
    assert report.plaintext_count == 0, report.plaintext_samples
    assert report.esp > 0
    for flow, times in received.items():
        assert any(t < killed_at for t in times), f"{flow}: no replies before the kill"
        assert not [t for t in times if killed_at + 0.2 < t < restarted_at], f"{flow}: replies in the outage"
        assert any(t > restarted_at for t in times), f"{flow}: no replies after the restart"

    node2 = node_entries(lab.name)["node-2"]
    assert node2["bootID"] != old_boot
    assert node2["agent"] == "ready" and node2["encryption"]["keyID"] == 3
    assert _tun_present(lab, "node-2")
    with UnderlayCapture(lab.name, tmp_path / "after.pcap") as capture:
        assert ping(a, b.ip, count=3)
        after = analyse(capture, pod_cidrs(lab.name))
    assert after.plaintext_count == 0, after.plaintext_samples
    assert after.esp_tunnels[(routers["node-1"], routers["node-2"], 3)] >= 3, (routers, after.esp_tunnels)
    assert after.esp_tunnels[(routers["node-2"], routers["node-1"], 3)] >= 3


def test_etcd_restart_agents_reconnect_and_follow_changes(ready_lab: Lab, tmp_path: Path) -> None:
    lab = ready_lab
    root = lab.info.paths.root
    pids = {node: agent_pid(lab.info, node) for node in NODES}
    assert stop_etcd(root)
    outage_from = time.time()
    assert running_etcd(root) is None
    # The datapath does not need the store: pods keep talking while it is away, and agents say it is.
    reach_all(lab.all_pods(), timeout=5.0)

    def outage_seen() -> bool:
        statuses = [agent_status(lab.info, node) for node in NODES]
        return all(s is not None and any("store" in e for e in s["errors"]) for s in statuses)

    wait_until(outage_seen, 15.0, "every agent reports the store unreachable")

    def passed_without_store() -> bool:
        statuses = [agent_status(lab.info, node) for node in NODES]
        return all(s is not None and (s["lastApply"] or 0) > outage_from for s in statuses)

    # Each agent's next pass tries to publish and cannot: a condition to report, not a failure of the
    # node's datapath (it stays ready, no traceback in its log).
    wait_until(passed_without_store, 15.0, "a pass of every agent while the store is away")
    assert {node: (agent_status(lab.info, node) or {}).get("agent") for node in NODES} == dict.fromkeys(
        NODES, "ready")
    restarted = start_etcd(root)
    assert restarted.client_url == lab.info.store

    # A change made after the restart reaches every agent only through a watch that reconnected.
    with connect(lab.info) as store:
        secret = store.get_key_secret(name=SECRET)
        assert secret is not None
        new_id = next_key_id(3)
        store.put_key_secret(generate_line(key_id=new_id).format(reveal=True), name=SECRET,
                             expect=secret.revision)

    def followed() -> bool:
        nodes = cli_json("encryption", "status", "--lab", lab.name)["nodes"]
        return all(node["keyID"] == new_id and node["agent"] == "ready" for node in nodes)

    wait_until(followed, 20.0, f"every agent on key ID {new_id}")
    wait_until(lambda: all(not n["errors"] for n in node_entries(lab.name).values()), 20.0,
               "store errors cleared on every node")
    status = cli_json("status", "--lab", lab.name)
    assert status["operator"]["running"]
    assert {node: agent_pid(lab.info, node) for node in NODES} == pids
    for node in NODES:
        log = lab_log(lab.info, f"agent-{node}").read_text()
        assert "Traceback" not in log, log[-2000:]
    wait_ready(lab.info, READY_TIMEOUT)
    reach_all(lab.all_pods())
    routers = _router_ips(lab)
    with UnderlayCapture(lab.name, tmp_path / "rotated.pcap") as capture:
        assert ping(lab.pods["node-3"], lab.pods["node-1"].ip, count=3)
        report = analyse(capture, pod_cidrs(lab.name))
    assert report.plaintext_count == 0, report.plaintext_samples
    assert report.esp_tunnels[(routers["node-3"], routers["node-1"], new_id)] >= 3


def test_sigterm_stops_agent_cleanly_and_restart_brings_it_back(ready_lab: Lab) -> None:
    lab = ready_lab
    pid = agent_pid(lab.info, "node-3")
    assert pid is not None
    took = _kill(pid, signal.SIGTERM, 10.0)
    # Gone from the store at once: the agent revoked its lease (expiry would take the 10 s TTL).
    with connect(lab.info) as store:
        assert "node-3" not in {node.value.name for node in store.list_nodes()}
    wait_until(lambda: not _tun_present(lab, "node-3"), 5.0, "node-3's TUN gone")
    node3 = lab.info.netns_of("node-3")
    remote = [r for r in ip_json(node3, "route", "show", "proto", "151") if r.get("type") != "unreachable"]
    assert remote == [], remote
    assert node_entries(lab.name)["node-3"]["agent"] == "absent"
    log = lab_log(lab.info, "agent-node-3").read_text()
    assert "Traceback" not in log, log[-2000:]
    print(f"agent exited {took:.2f} s after SIGTERM")

    start_agent(lab.info, "node-3")
    wait_ready(lab.info, READY_TIMEOUT)
    reach_all(lab.all_pods())
    assert node_entries(lab.name)["node-3"]["agent"] == "ready"


def _fdb(namespace: str) -> frozenset[tuple[str, str]]:
    entries = ip_json(namespace, "fdb", "show", "dev", "cilium_vxlan", tool="bridge")
    return frozenset((entry["mac"], entry["dst"]) for entry in entries if "dst" in entry)


def _neighbours(namespace: str) -> dict[str, str]:
    entries = ip_json(namespace, "neigh", "show", "dev", "cilium_vxlan")
    return {entry["dst"]: entry["lladdr"] for entry in entries if "PERMANENT" in entry["state"]}


def _esp_table(namespace: str) -> set[str]:
    return {route["dst"] for route in ip_json(namespace, "route", "show", "table", "50", "proto", "150")}


def _engine_routes(namespace: str) -> set[str]:
    routes = ip_json(namespace, "route", "show", "proto", "151")
    return {route["dst"] for route in routes if route.get("dev") == ENGINE_TUN}


Datapath = tuple[frozenset[tuple[str, str]], dict[str, str], set[str], set[str]]


def _datapath(lab: Lab, node: str) -> Datapath:
    namespace = lab.info.netns_of(node)
    return _fdb(namespace), _neighbours(namespace), _esp_table(namespace), _engine_routes(namespace)


def _expected_datapath(lab: Lab, node: str) -> Datapath:
    peers = [entry for name, entry in node_entries(lab.name).items() if name != node]
    return (
        frozenset((vtep_mac(IPv4Address(p["routerIP"])), p["nodeIP"]) for p in peers),
        {p["routerIP"]: vtep_mac(IPv4Address(p["routerIP"])) for p in peers},
        {p["routerIP"] for p in peers},
        {p["podCIDRs"][0] for p in peers},
    )


def _damage(lab: Lab, node: str, victim: str, misdirected: str) -> None:
    """Leave the node as a crash halfway through applying would: a peer half gone, one misdirected,
    and one that no longer exists half added."""
    peers = node_entries(lab.name)
    gone, wrong = peers[victim], peers[misdirected]
    stale = "10.255.255.1"
    commands = [
        ["bridge", "fdb", "del", vtep_mac(IPv4Address(gone["routerIP"])), "dev", "cilium_vxlan",
         "dst", gone["nodeIP"], "self"],
        ["ip", "neigh", "del", gone["routerIP"], "dev", "cilium_vxlan"],
        ["ip", "route", "del", gone["routerIP"], "table", "50"],
        ["bridge", "fdb", "replace", vtep_mac(IPv4Address(wrong["routerIP"])), "dev", "cilium_vxlan",
         "dst", gone["nodeIP"], "self", "permanent"],
        ["ip", "neigh", "replace", stale, "lladdr", vtep_mac(IPv4Address(stale)), "dev", "cilium_vxlan",
         "nud", "permanent"],
        ["bridge", "fdb", "append", vtep_mac(IPv4Address(stale)), "dev", "cilium_vxlan", "dst", "192.0.2.1",
         "self", "permanent"],
        ["ip", "route", "add", stale, "dev", "cilium_vxlan", "table", "50", "proto", "150"],
    ]
    if _tun_present(lab, node):
        commands.append(["ip", "route", "del", gone["podCIDRs"][0], "dev", ENGINE_TUN])
    script = " && ".join(" ".join(argv) for argv in commands)
    done = run_cli("lab", "exec", "--name", lab.name, node, "--", "sh", "-c", script)
    assert done.returncode == 0, (script, done.stderr)


def test_crash_mid_apply_converges_on_restart(ready_lab: Lab) -> None:
    lab = ready_lab
    pid = agent_pid(lab.info, "node-1")
    assert pid is not None
    _kill(pid, signal.SIGKILL, 5.0)
    _damage(lab, "node-1", victim="node-3", misdirected="node-2")
    damaged = _datapath(lab, "node-1")
    expected = _expected_datapath(lab, "node-1")
    assert damaged[:3] != expected[:3]
    start_agent(lab.info, "node-1")
    wait_ready(lab.info, READY_TIMEOUT)
    wait_until(lambda: _datapath(lab, "node-1") == expected, 10.0, "node-1's datapath converges")
    reach_all(lab.all_pods())


def test_periodic_resync_repairs_a_live_node(ready_lab: Lab) -> None:
    lab = ready_lab
    pid = agent_pid(lab.info, "node-2")
    expected = _expected_datapath(lab, "node-2")
    assert _datapath(lab, "node-2") == expected
    _damage(lab, "node-2", victim="node-1", misdirected="node-3")
    start = time.monotonic()
    wait_until(lambda: _datapath(lab, "node-2") == expected, 15.0, "node-2's datapath repaired")
    took = time.monotonic() - start
    print(f"repaired within {took:.1f} s")
    assert agent_pid(lab.info, "node-2") == pid
    reach_all(lab.all_pods())


def test_bad_input_against_a_running_lab_disturbs_nothing(ready_lab: Lab) -> None:
    lab = ready_lab
    pids = {node: agent_pid(lab.info, node) for node in NODES}
    line = error_line(run_cli("lab", "exec", "--name", lab.name, "node-9", "--", "true"))
    assert "node-9" in line
    line = error_line(run_cli("lab", "pod", "run", "z", "--name", lab.name, "--node", "node-9"))
    assert "node-9" in line
    assert not netns.exists(f"{lab.name}-pod-z")
    assert not (lab.info.paths.pod_dir() / "z.json").exists()
    line = error_line(run_cli("encryption", "status", "--lab", lab.name, "--node", "node-9"))
    assert "node-9" in line
    line = error_line(run_cli("lab", "pod", "run", "a", "--name", lab.name, "--node", "node-1"))
    assert "already exists" in line
    line = error_line(run_cli("lab", "pod", "run", "Bad_Name", "--name", lab.name, "--node", "node-1"))
    assert "Bad_Name" in line
    again = run_cli("lab", "up", "--control-plane", "etcd", "--name", lab.name, "--nodes", "3", *IPSEC)
    assert again.returncode == 0 and "nothing was missing" in again.stderr, again.stderr
    line = error_line(run_cli("lab", "up", "--control-plane", "etcd", "--name", lab.name, "--nodes", "3"))
    assert f"ciphermesh lab down --name {lab.name}" in line and "already up" in line, line
    assert {node: agent_pid(lab.info, node) for node in NODES} == pids
    wait_ready(lab.info, 5.0)
    reach_all(lab.all_pods(), timeout=5.0)
