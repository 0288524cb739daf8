"""`connectivity test` on real labs: IPsec passes, disabled passes in sanity mode, each verdict can fail."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from ciphermesh.datapath.netlink.links import CILIUM_VXLAN
from ciphermesh.keys import parse_secret
from ciphermesh.lab import netns
from ciphermesh.lab.cluster import LabInfo, connect
from ciphermesh.lab.connectivity import POD_PREFIX, ConnectivityResult, run_connectivity_test
from ciphermesh.lab.names import underlay_netns
from ciphermesh.lab.plaintext_probe import inject_plaintext
from ciphermesh.lab.pod_registry import list_pod_records
from ciphermesh.lab.processes import pids_in_netns
from ciphermesh.lab.wire_verdict import (
    IPsecExpectation,
    NodeEncryptionExpectation,
    SanityExpectation,
    StrictModeExpectation,
    WireEvidence,
    judge,
    markers_in,
    tunnel_pairs,
)
from tests.support.cluster import IPSEC, ciphermesh, running_lab
from tests.support.lab import UnderlayCapture

pytestmark = [pytest.mark.netns, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


@pytest.fixture(scope="module")
def ipsec_lab() -> Iterator[LabInfo]:
    with running_lab("cc", 2, IPSEC) as info:
        yield info


@pytest.fixture(scope="module")
def disabled_lab() -> Iterator[LabInfo]:
    with running_lab("cc", 2) as info:
        yield info


@pytest.fixture(scope="module")
def ipsec_result(ipsec_lab: LabInfo) -> ConnectivityResult:
    return run_connectivity_test(ipsec_lab)


@pytest.fixture(scope="module")
def disabled_result(disabled_lab: LabInfo) -> ConnectivityResult:
    return run_connectivity_test(disabled_lab)


def _current_spi(info: LabInfo) -> int:
    with connect(info) as store:
        secret = store.get_key_secret(name="cilium-ipsec-keys")
    assert secret is not None
    return parse_secret(secret.value.keys).key_id


def _router_ips(info: LabInfo) -> list[str]:
    with connect(info) as store:
        records = {v.value.name: v.value for v in store.list_nodes()}
    return [str(records[node].router_ip) for node in info.nodes]


def _assert_nothing_left(info: LabInfo) -> None:
    assert list_pod_records(info) == []
    assert not [name for name in netns.lab_residue(info.name).namespaces if POD_PREFIX in name]
    assert pids_in_netns(underlay_netns(info.name)) == []  # tcpdump is gone


def test_ipsec_lab_passes(ipsec_lab: LabInfo, ipsec_result: ConnectivityResult) -> None:
    result = ipsec_result
    assert result.verdict.passed, result.verdict.reasons
    assert result.mode == "ipsec"
    assert [(p.src_node, p.dst_node, p.protocol, p.src_host, p.dst_host) for p in result.probes] == [
        ("node-1", "node-2", "icmp", False, False), ("node-1", "node-2", "tcp", False, False),
        ("node-1", "node-2", "udp", False, False), ("node-2", "node-1", "icmp", False, False),
        ("node-2", "node-1", "tcp", False, False), ("node-2", "node-1", "udp", False, False),
        # Cilium's node-to-node probes: host to remote host, pod to remote host, host to remote pod.
        ("node-1", "node-2", "icmp", True, True), ("node-1", "node-2", "icmp", False, True),
        ("node-1", "node-2", "tcp", True, False), ("node-2", "node-1", "icmp", True, True),
        ("node-2", "node-1", "icmp", False, True), ("node-2", "node-1", "tcp", True, False),
    ]
    assert all(p.ok and p.rtt_ms is not None and p.rtt_ms > 0 for p in result.probes)
    report = result.evidence.report
    assert report.plaintext_count == 0
    assert result.evidence.markers_seen == ()
    assert len(result.evidence.markers_sent) == 6
    # Node encryption is off: host traffic is seen in clear (sanity), a host to a remote pod is not.
    assert result.node_expectation.mode == "node-sanity"
    assert sorted(result.node_evidence.markers_seen) == sorted(
        p.label for p in result.probes if p.dst_host
    )
    assert report.host_plaintext_count > 0
    spi = _current_spi(ipsec_lab)
    a, b = _router_ips(ipsec_lab)
    assert report.esp_tunnels[(a, b, spi)] > 0 and report.esp_tunnels[(b, a, spi)] > 0
    assert result.capture.captured >= report.esp
    _assert_nothing_left(ipsec_lab)


def test_cli_report_and_json(ipsec_lab: LabInfo) -> None:
    spi = _current_spi(ipsec_lab)
    table = ciphermesh("connectivity", "test", "--lab", ipsec_lab.name)
    assert table.returncode == 0, table.stdout + table.stderr
    assert re.search(rf"ESP spi={spi:#x}: [1-9][0-9]* packets, plaintext between pods: 0\n", table.stdout)
    assert "✅ All 12 tests passed\n" in table.stdout
    assert table.stdout.count(" ok ") == 12
    assert "node-1 host (" in table.stdout
    as_json = ciphermesh("connectivity", "test", "--lab", ipsec_lab.name, "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["verdict"] == {"passed": True, "reasons": []}
    assert document["wire"]["plaintext"] == 0 and document["wire"]["espBySPI"][str(spi)] > 0
    assert document["nodeToNode"]["mode"] == "node-sanity" and document["nodeToNode"]["markersSent"] == 6
    assert {(t["src"], t["dst"], t["spi"]) for t in document["wire"]["espTunnels"]} >= {
        (a, b, spi) for a, b in tunnel_pairs(_router_ips(ipsec_lab))
    }
    _assert_nothing_left(ipsec_lab)


def test_disabled_lab_passes_in_sanity_mode(
    disabled_lab: LabInfo, disabled_result: ConnectivityResult
) -> None:
    result = disabled_result
    assert result.verdict.passed, result.verdict.reasons
    assert result.mode == "disabled"
    assert all(p.ok for p in result.probes) and len(result.probes) == 12
    assert result.evidence.report.plaintext_count > 0
    assert result.evidence.report.esp == 0
    assert set(result.evidence.markers_seen) == set(result.evidence.markers_sent)
    shown = ciphermesh("connectivity", "test", "--lab", disabled_lab.name)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    plain = re.search(r"sanity mode \(encryption disabled\): plaintext between pods: ([0-9]+)", shown.stdout)
    assert plain and int(plain.group(1)) > 0
    assert "probe payloads found in the capture: 6/6" in shown.stdout
    assert "✅ All 12 tests passed" in shown.stdout
    _assert_nothing_left(disabled_lab)


def test_encrypted_verdict_fails_on_a_plaintext_capture(
    disabled_lab: LabInfo, disabled_result: ConnectivityResult
) -> None:
    expectation = IPsecExpectation(3, tunnel_pairs(_router_ips(disabled_lab)))
    verdict = judge(disabled_result.probes, disabled_result.evidence, expectation)
    assert not verdict.passed
    plaintext, readable, *missing_esp = verdict.reasons
    assert re.fullmatch(r"[0-9]+ plaintext packets between pod addresses on the underlay, e\.g\. .+",
                        plaintext)
    assert readable.startswith("probe payloads readable in the capture: ")
    assert all(label in readable for label in disabled_result.evidence.markers_sent)
    assert missing_esp == [f"no ESP with spi=0x3 from {a} to {b}" for a, b in expectation.tunnels]


def test_sanity_verdict_fails_on_an_encrypted_capture(ipsec_result: ConnectivityResult) -> None:
    verdict = judge(ipsec_result.probes, ipsec_result.evidence, SanityExpectation())
    assert not verdict.passed
    assert "no plaintext between pods was seen" in verdict.reasons[0]
    assert verdict.reasons[1].startswith("sanity mode: probe payloads not found in the capture: ")


def test_failed_probe_dropped_packets_and_other_spi_fail_the_verdict(
    ipsec_lab: LabInfo, ipsec_result: ConnectivityResult
) -> None:
    probes = list(ipsec_result.probes)
    probes[1] = dataclasses.replace(probes[1], ok=False, rtt_ms=None, error="connect: timed out")
    evidence = dataclasses.replace(ipsec_result.evidence, dropped_by_kernel=2)
    spi = _current_spi(ipsec_lab)
    next_spi = spi % 15 + 1
    expectation = IPsecExpectation(next_spi, tunnel_pairs(_router_ips(ipsec_lab)))
    verdict = judge(probes, evidence, expectation)
    assert verdict.reasons[:2] == (
        "tcp node-1 -> node-2: connect: timed out",
        "the capture is incomplete: 2 packets dropped by the kernel",
    )
    assert len(verdict.reasons) == 4
    assert all(f"(seen: spi={spi:#x})" in reason for reason in verdict.reasons[2:])


@pytest.mark.parametrize("kind", ["ipsec", "wireguard"])
def test_node_encryption_and_strict_mode_leave_nothing_in_clear(
    kind: str, ipsec_result: ConnectivityResult
) -> None:
    sets = ("encryption.enabled=true", f"encryption.type={kind}", "encryption.nodeEncryption=true",
            "encryption.strictMode.enabled=true")
    with running_lab("cn", 2, sets) as info:
        result = run_connectivity_test(info)
        assert result.verdict.passed, result.verdict.reasons
        # Strict mode: a plaintext pod packet forced out cilium_vxlan on each node, dropped and counted.
        assert result.strict is not None
        strict_evidence, strict = result.strict
        assert dict(strict.injected) == {"node-1": 1, "node-2": 1}
        assert dict(strict.dropped) == {"node-1": 1, "node-2": 1}
        assert strict_evidence.markers_seen == () and len(strict_evidence.markers_sent) == 2
        assert result.node_expectation.mode == "node-encryption"
        assert len([p for p in result.probes if p.src_host or p.dst_host]) == 6
        report = result.evidence.report
        assert report.host_plaintext_count == 0 and report.plaintext_count == 0, report.as_dict()
        assert result.node_evidence.markers_seen == ()
        if kind == "wireguard":
            assert report.wireguard > 0 and report.esp == 0
        else:
            assert report.esp > 0
        shown = ciphermesh("encryption", "status", "--lab", info.name)
        assert "[NodeEncryption: Enabled]" in shown.stdout.splitlines()[0], shown.stdout
        assert "Strict mode: 10.0.0.0/8 on 2/2 nodes; unencrypted traffic dropped: node-1: 1, node-2: 1" in (
            " ".join(shown.stdout.split())
        ), shown.stdout
    # The same verdict over a lab without node encryption: its host traffic in clear fails it.
    plain = NodeEncryptionExpectation().problems(ipsec_result.node_evidence)
    assert plain and "plaintext packets to or from node addresses" in plain[0]


def test_strict_mode_check_sees_plaintext_where_no_guard_drops_it(
    ipsec_lab: LabInfo, ipsec_result: ConnectivityResult, tmp_path: Path
) -> None:
    assert ipsec_result.strict is None  # strict mode is off in this lab
    src, dst = _router_ips(ipsec_lab)
    marker = b"cm-strict unguarded probe"
    with UnderlayCapture(ipsec_lab.name, tmp_path / "unguarded.pcap") as capture:
        inject_plaintext(ipsec_lab.netns_of("node-1"), src=IPv4Address(src), dst=IPv4Address(dst),
                         device=CILIUM_VXLAN, payload=marker)
        time.sleep(0.5)
        pcap = capture.stop()
    evidence = WireEvidence(ipsec_result.evidence.report, ("strict node-1 -> node-2",),
                            markers_in(pcap, {"strict node-1 -> node-2": marker}), 0)
    problems = StrictModeExpectation({"node-1": 1}, {"node-1": None}).problems(evidence)
    assert problems == [
        "strict mode let plaintext through: strict node-1 -> node-2",
        "node-1: no strict-mode drop counter (is the guard in place?)",
    ]


def test_interrupted_run_removes_its_pods_and_tcpdump(ipsec_lab: LabInfo) -> None:
    seen: list[str] = []

    def interrupt_while_probing(message: str) -> None:
        seen.append(message)
        if message.startswith("probing"):
            assert list_pod_records(ipsec_lab) and pids_in_netns(underlay_netns(ipsec_lab.name))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_connectivity_test(ipsec_lab, interrupt_while_probing)
    assert any(message.startswith("removing 2 check pods") for message in seen)
    _assert_nothing_left(ipsec_lab)
