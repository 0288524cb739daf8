"""Garbage floods at running engines (issue 10): raw ESP at the IPsec engine, UDP at cilium_wg0's port.

Each garbage packet is counted as a drop under its name, the engine forwards afterwards, and nothing
leaves in plaintext. The core-level fuzz tests (test_esp_fuzz, test_wireguard_fuzz) throw more and
stranger bytes; these prove the running engine, its sockets and its status say the same.
"""

from __future__ import annotations

import os
import random
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ciphermesh.lab import netns
from ciphermesh.lab.cluster import LabInfo, agent_status, load_lab
from ciphermesh.lab.pod_registry import PodRecord, get_pod
from tests.support.lab import (
    IPSEC,
    UnderlayCapture,
    analyse,
    lab_guard,
    ping,
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

WIREGUARD = ("--set", "encryption.enabled=true", "--set", "encryption.type=wireguard")
PACKETS = 20_000
BATCH = 500
SEED = 20261201
SPI = 3
GCM_MIN_ESP = 8 + 8 + 2 + 16  # header, IV, pad length and next header, ICV
WG_PORT = 51871
WG_MIN = 32


@pytest.fixture
def two_nodes(request: pytest.FixtureRequest) -> Iterator[tuple[LabInfo, PodRecord, PodRecord]]:
    name = unique_lab("lf")
    with lab_guard(name):
        up = run_cli("lab", "up", "--control-plane", "etcd", "--name", name, "--nodes", "2", *request.param)
        assert up.returncode == 0, up.stderr
        info = load_lab(name)
        for pod, node in (("a", "node-1"), ("b", "node-2")):
            created = run_cli("lab", "pod", "run", pod, "--name", name, "--node", node)
            assert created.returncode == 0, created.stderr
        yield info, get_pod(info, "a"), get_pod(info, "b")


def _engine(info: LabInfo, node: str) -> dict[str, Any]:
    status = agent_status(info, node)
    assert status is not None and status["encryption"]["engineStatus"] is not None
    return dict(status["encryption"]["engineStatus"])


def _esp_garbage(rng: random.Random) -> tuple[bytes, str]:
    """One random ESP payload and the drop it must be counted as."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(8)), "XfrmInHdrError"
    if kind == 1:
        spi = rng.randrange(16, 1 << 32)  # SPIs are key IDs 1..15: nobody's
        return struct.pack(">I", spi) + rng.randbytes(rng.randrange(4, 200)), "XfrmInNoStates"
    if kind == 2:  # the lab's SPI, too short for AES-GCM
        return struct.pack(">I", SPI) + rng.randbytes(rng.randrange(4, GCM_MIN_ESP - 4)), "XfrmInHdrError"
    # The lab's SPI, a sequence number far above the window, random bytes: authentication fails.
    head = struct.pack(">II", SPI, rng.randrange(1 << 24, 1 << 31))
    return head + rng.randbytes(rng.randrange(GCM_MIN_ESP - 8, 1400)), "XfrmInStateProtoError"


def _wg_garbage(rng: random.Random) -> tuple[bytes, str]:
    """One random datagram for cilium_wg0 and the drop it must be counted as."""
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(WG_MIN)), "tooShort"
    if kind == 1:
        return bytes([rng.randrange(5, 256)]) + rng.randbytes(rng.randrange(WG_MIN - 1, 400)), "unknownType"
    if kind == 2:  # an initiation of the wrong size
        size = rng.choice([rng.randrange(WG_MIN, 148), rng.randrange(149, 400)])
        return b"\x01\0\0\0" + rng.randbytes(size - 4), "badSize"
    if kind == 3:  # an initiation of the right size whose MAC1 is not for us
        return b"\x01\0\0\0" + rng.randbytes(144), "badMac1"
    return b"\x04\0\0\0" + rng.randbytes(rng.randrange(WG_MIN - 4, 1400)), "unknownIndex"


def _flood(
    send: Callable[[bytes], object], make: Callable[[random.Random], tuple[bytes, str]],
    counts: Callable[[], dict[str, int]],
) -> Counter[str]:
    """Send PACKETS garbage packets in batches, each batch counted in full before the next; the tally."""
    rng = random.Random(SEED)
    before = counts()
    expected: Counter[str] = Counter()
    for _ in range(PACKETS // BATCH):
        for _ in range(BATCH):
            packet, drop = make(rng)
            send(packet)
            expected[drop] += 1

        def counted() -> bool:
            now = counts()
            return all(now.get(name, 0) - before.get(name, 0) >= n for name, n in expected.items())

        wait_until(counted, 10.0, f"{sum(expected.values())} garbage packets counted")
    after = counts()
    return Counter({name: after.get(name, 0) - before.get(name, 0) for name in expected})


@pytest.mark.parametrize("two_nodes", [IPSEC], indirect=True)
def test_random_esp_at_the_ipsec_engine_is_counted_by_name(
    two_nodes: tuple[LabInfo, PodRecord, PodRecord], tmp_path: Path
) -> None:
    info, a, b = two_nodes
    routers = {node: _engine(info, node)["localRouterIP"] for node in ("node-1", "node-2")}
    with UnderlayCapture(info.name, tmp_path / "underlay.pcap") as capture:
        with netns.entered(info.netns_of("node-1")):
            forger = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ESP)
        with forger:
            forger.bind((routers["node-1"], 0))
            target = (routers["node-2"], 0)
            rng_check = random.Random(SEED)
            expected = Counter(_esp_garbage(rng_check)[1] for _ in range(PACKETS))
            tally = _flood(lambda p: forger.sendto(p, target), _esp_garbage,
                           lambda: _engine(info, "node-2")["errors"])
        assert tally == expected
        assert ping(a, b.ip, count=3) and ping(b, a.ip, count=3)
        report = analyse(capture, pod_cidrs(info.name))
    assert report.plaintext_count == 0, report.plaintext_samples
    assert report.esp >= PACKETS - expected["XfrmInHdrError"]  # the analyser needs an SPI to call it ESP


@pytest.mark.parametrize("two_nodes", [WIREGUARD], indirect=True)
def test_random_udp_at_cilium_wg0_is_counted_by_name(
    two_nodes: tuple[LabInfo, PodRecord, PodRecord], tmp_path: Path
) -> None:
    info, a, b = two_nodes
    with UnderlayCapture(info.name, tmp_path / "underlay.pcap") as capture:
        with netns.entered(info.netns_of("node-1")):
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sender:
            target = (info.node_ips["node-2"], WG_PORT)
            rng_check = random.Random(SEED)
            expected = Counter(_wg_garbage(rng_check)[1] for _ in range(PACKETS))
            tally = _flood(lambda p: sender.sendto(p, target), _wg_garbage,
                           lambda: _engine(info, "node-2")["drops"])
        assert tally == expected
        assert ping(a, b.ip, count=3) and ping(b, a.ip, count=3)
        report = analyse(capture, pod_cidrs(info.name))
    assert report.plaintext_count == 0, report.plaintext_samples
