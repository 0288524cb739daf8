"""The IPsec engine's GSO writes to the TUN: byte-exact TCP, merged packets on the TUN, ESP within the MTU."""

from __future__ import annotations

import hashlib
import secrets
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from scapy.layers.inet import IP
from scapy.utils import rdpcap

from ciphermesh.datapath.mtu import plan_mtus
from ciphermesh.lab import netns
from tests.datapath.test_ipsec_engine_netns import Node, Pair, PcapCapture, esp_frames, pair, tcp_transfer
from tests.support.netns import TUN

__all__ = ["pair"]  # the fixture, shared with the engine's other namespace tests

pytestmark = [pytest.mark.netns, pytest.mark.slow]

MTUS = plan_mtus("ipsec")


class TunCapture:
    """tcpdump -w on a node's engine TUN: the inner packets as the kernel takes them from the engine."""

    def __init__(self, node: Node, path: Path) -> None:
        self.path = path
        argv = ["tcpdump", "-n", "-U", "--immediate-mode", "-Z", "root", "-s", "0", "-i", TUN]
        argv += ["-w", str(path)]
        self.process = netns.popen(node.netns, argv, stderr=subprocess.PIPE)
        assert self.process.stderr is not None
        line = self.process.stderr.readline().decode()
        if "listening on" not in line:
            self.process.kill()
            raise AssertionError(f"tcpdump did not start: {line!r}")

    def stop(self) -> list[int]:
        """Stop and give the IP total length of every captured packet."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=5)
        return [packet[IP].len for packet in rdpcap(str(self.path)) if packet.haslayer(IP)]


def transfer_both_ways(pair: Pair, tmp_path: Path) -> tuple[list[int], list[IP]]:
    """Byte-exact TCP a -> b and b -> a; the IP lengths on b's TUN and the ESP packets on the underlay."""
    underlay = PcapCapture(pair.plan, tmp_path / "underlay.pcap")
    tun = TunCapture(pair.b, tmp_path / "tun-b.pcap")
    try:
        for sender, receiver, size in ((pair.a, pair.b, 8 << 20), (pair.b, pair.a, 2 << 20)):
            data = secrets.token_bytes(size)
            received = tcp_transfer(sender, receiver, data)
            assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    finally:
        lengths = tun.stop()
        report = underlay.report(pair)
    assert report.plaintext_count == 0, report.plaintext_samples
    for node in (pair.a, pair.b):
        assert pair.status(node)["errors"] == {}
    return lengths, esp_frames(underlay.path)


def test_with_offload_received_tcp_runs_reach_the_kernel_merged_and_esp_fits_vxlan(
    pair: Pair, tmp_path: Path
) -> None:
    tun_lengths, esp = transfer_both_ways(pair, tmp_path)
    assert max(tun_lengths) > MTUS.pod  # merged writes: packets no segment of the pod MTU could make
    assert len(esp) > 100
    assert max(frame.len for frame in esp) <= MTUS.vxlan


def test_without_offload_every_packet_is_written_as_it_came(pair: Pair, tmp_path: Path) -> None:
    for node in (pair.a, pair.b):
        pair.stop(node)
        node.control.unlink(missing_ok=True)
        node.boot_id = str(uuid.uuid4())  # a new engine process needs new keys, as a restarted agent has
    pair.start(pair.a, pair.state(pair.a, (3,), 3), "--no-offload")
    pair.start(pair.b, pair.state(pair.b, (3,), 3), "--no-offload")
    tun_lengths, esp = transfer_both_ways(pair, tmp_path)
    assert max(tun_lengths) <= MTUS.pod
    assert max(frame.len for frame in esp) <= MTUS.vxlan
