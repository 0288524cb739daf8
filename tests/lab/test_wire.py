"""Wire analysis on captures that scapy, an independent implementation, builds."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.ipsec import ESP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import wrpcap

from ciphermesh.lab.wire import PlainPacket, WireReport, analyse_capture
from ciphermesh.lab.wire_verdict import (
    NodeEncryptionExpectation,
    NodeSanityExpectation,
    WireEvidence,
    probe_label,
)

PODS = [ipaddress.IPv4Network("10.0.1.0/24"), ipaddress.IPv4Network("10.0.2.0/24")]


def _underlay(inner: object) -> object:
    return (
        Ether()
        / IP(src="172.30.0.2", dst="172.30.0.3")
        / UDP(sport=40000, dport=8472)
        / VXLAN(vni=2)
        / Ether()
        / inner
    )


def _capture(tmp_path: Path, packets: list[object]) -> bytes:
    path = tmp_path / "c.pcap"
    wrpcap(str(path), packets)
    return path.read_bytes()


def test_esp_counted_by_spi_and_tunnel(tmp_path: Path) -> None:
    packets = [
        _underlay(IP(src="10.0.1.1", dst="10.0.2.1") / ESP(spi=3, seq=n, data=b"\x00" * 40))
        for n in range(1, 6)
    ] + [_underlay(IP(src="10.0.2.1", dst="10.0.1.1") / ESP(spi=4, seq=1, data=b"\x00" * 40))]
    packets.append(Ether() / ARP())
    report = analyse_capture(_capture(tmp_path, packets), PODS)
    assert report.frames == 7
    assert report.esp_by_spi == {3: 5, 4: 1}
    assert report.esp_tunnels[("10.0.1.1", "10.0.2.1", 3)] == 5
    assert report.plaintext_count == 0


def test_plaintext_inside_vxlan_and_on_the_underlay_is_found(tmp_path: Path) -> None:
    packets = [
        _underlay(IP(src="10.0.1.5", dst="10.0.2.7") / ICMP() / b"secret"),
        Ether() / IP(src="172.30.0.2", dst="10.0.2.7") / TCP(dport=80),
        Ether() / IP(src="172.30.0.2", dst="172.30.0.3") / TCP(dport=2379),
        Ether() / IP(src="172.30.0.2", dst="172.30.0.3") / UDP(sport=51871, dport=51871) / bytes(32),
    ]
    report = analyse_capture(_capture(tmp_path, packets), PODS)
    assert report.plaintext_count == 2
    assert report.wireguard == 1
    first, second = report.plaintext_samples
    assert (first.src, first.dst, first.protocol) == ("10.0.1.5", "10.0.2.7", "ICMP")
    assert first.inside_vxlan
    assert (second.protocol, second.inside_vxlan) == ("TCP", False)
    assert report.as_dict()["plaintext"] == 2


def test_truncated_frames_are_not_a_crash(tmp_path: Path) -> None:
    whole = bytes(_underlay(IP(src="10.0.1.1", dst="10.0.2.1") / ESP(spi=3, seq=1, data=b"\x00" * 8)))
    packets = [Ether(whole[:cut]) for cut in range(0, len(whole), 3) if cut >= 14]
    report = analyse_capture(_capture(tmp_path, packets), PODS)
    assert report.frames == len(packets)


def test_plaintext_with_a_node_address_is_host_plaintext(tmp_path: Path) -> None:
    packets = [
        Ether() / IP(src="172.30.0.2", dst="172.30.0.3") / ICMP() / b"host to host",
        Ether() / IP(src="10.0.1.5", dst="172.30.0.3") / ICMP() / b"pod to host",
        Ether() / IP(src="172.30.0.2", dst="10.0.2.7") / TCP(dport=80),
        _underlay(IP(src="10.0.1.5", dst="10.0.2.7") / ICMP() / b"pod to pod"),
        Ether() / IP(src="172.30.0.2", dst="172.30.0.3") / UDP(sport=51871, dport=51871) / bytes(32),
    ]
    report = analyse_capture(_capture(tmp_path, packets), PODS, node_ips=("172.30.0.2", "172.30.0.3"))
    assert report.plaintext_count == 1 and report.plaintext_samples[0].dst == "10.0.2.7"
    assert report.host_plaintext_count == 3
    assert [(p.src, p.dst) for p in report.host_plaintext_samples] == [
        ("172.30.0.2", "172.30.0.3"), ("10.0.1.5", "172.30.0.3"), ("172.30.0.2", "10.0.2.7"),
    ]
    assert report.wireguard == 1
    assert report.as_dict()["plaintextHost"] == 3


def test_node_expectations_judge_host_plaintext_and_markers() -> None:
    clean = WireReport()
    leaky = WireReport(host_plaintext_count=2,
                       host_plaintext_samples=[PlainPacket("172.30.0.2", "172.30.0.3", "ICMP", False)])
    host_to_host = probe_label("icmp", "node-1", "node-2", True, True)
    host_to_pod = "tcp node-1 (host) -> node-2"
    assert host_to_host == "icmp node-1 (host) -> node-2 (host)"
    sent = (host_to_host, host_to_pod)
    encrypted = NodeEncryptionExpectation()
    assert encrypted.problems(WireEvidence(clean, sent, (), 0)) == []
    problems = encrypted.problems(WireEvidence(leaky, sent, (host_to_host,), 0))
    assert problems == [
        "2 plaintext packets to or from node addresses on the underlay, e.g. ICMP 172.30.0.2 > 172.30.0.3",
        f"probe payloads readable in the capture: {host_to_host}",
    ]
    sanity = NodeSanityExpectation(must_see=(host_to_host,), must_not_see=(host_to_pod,))
    assert sanity.problems(WireEvidence(leaky, sent, (host_to_host,), 0)) == []
    # Blind (nothing seen) and leaking (the always-encrypted probe readable) both fail.
    assert "not found in the capture" in sanity.problems(WireEvidence(clean, sent, (), 0))[0]
    # A capture that lost packets proves no absence: judged incomplete instead (by `judge`).
    assert sanity.problems(WireEvidence(clean, sent, (), 3)) == []
    assert sanity.problems(WireEvidence(leaky, sent, sent, 0)) == [
        f"probe payloads readable in the capture: {host_to_pod}"
    ]
