"""Traffic that must survive key rotations (10 ms pings between pods on every pair of nodes, a paced TCP
stream, an underlay capture) and the waits around them."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import IO, Any

from ciphermesh.config import load_values
from ciphermesh.lab import netns
from ciphermesh.lab.cluster import LabInfo, lab_up, pod_cidr_of
from ciphermesh.lab.down import lab_down
from ciphermesh.lab.pod_registry import PodRecord, run_pod
from ciphermesh.lab.rotation_progress import RotationTimeline, follow_rotation
from ciphermesh.lab.wire import WireReport, analyse_capture
from ciphermesh.pcap import build_pcap, parse_pcap
from tests.support.cluster import IPSEC, ciphermesh
from tests.support.lab import UnderlayCapture
from tests.support.names import unique_lab

PING_INTERVAL = "0.01"
# Replies still in flight when ping is interrupted are not losses; 50 (0.5 s at 10 ms) covers a slow RTT.
PING_TAIL_ALLOWANCE = 50
STREAM_SCRIPT = Path(__file__).with_name("rotation_stream.py")
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from [0-9.]+: icmp_seq=(\d+) ", re.MULTILINE)
_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")



@dataclass
class RotationLab:
    """A lab with one pod per node, named p1..pN after the nodes."""

    info: LabInfo
    pods: dict[str, PodRecord]
    tmp: Path

    @property
    def name(self) -> str:
        return self.info.name

    def pod_cidrs(self) -> list[IPv4Network]:
        return [pod_cidr_of(self.info, node)[0] for node in self.info.nodes]

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`ciphermesh ARGS --lab <this lab>` as a user runs it."""
        return ciphermesh(*args, "--lab", self.name, timeout=timeout)

    def key_set(self, line: str) -> None:
        result = self.cli("encryption", "key", "set", line)
        assert result.returncode == 0, result.stderr

    def rotate(self) -> int:
        """`encryption key rotate`; the new key ID it printed."""
        result = self.cli("encryption", "key", "rotate")
        assert result.returncode == 0, result.stderr
        match = re.search(r"new key SPI: (\d+)", result.stdout)
        assert match, result.stdout
        return int(match.group(1))

    def wait_settled(self, key_id: int, timeout: float = 60.0) -> RotationTimeline:
        """Follow the rotation to `key_id` until every node holds only it; fails with who lags."""
        timeline = follow_rotation(self.info, key_id, start=time.monotonic(), timeout=timeout, poll=0.2)
        assert timeline.settled is not None, timeline.last.describe()
        return timeline

    def encryption_status(self) -> dict[str, Any]:
        result = self.cli("encryption", "status", "-o", "json")
        assert result.returncode == 0, result.stderr
        document: dict[str, Any] = json.loads(result.stdout)
        return document


@contextlib.contextmanager
def rotation_lab(tmp: Path, nodes: int = 3, sets: tuple[str, ...] = ()) -> Iterator[RotationLab]:
    """A lab (`ro` + 4 hex) with IPsec on and a pod per node; removed whatever happens."""
    name = unique_lab("ro")
    try:
        info = lab_up(name, nodes, load_values(sets=(*IPSEC, *sets)), lambda _m: None)
        pods = {f"p{i}": run_pod(info, f"p{i}", node) for i, node in enumerate(info.nodes, start=1)}
        yield RotationLab(info, pods, tmp)
    finally:
        lab_down(name, lambda _m: None)
    assert not netns.lab_residue(name)


@dataclass(frozen=True)
class PingResult:
    """One ping process: what it sent, which sequence numbers came back, and when."""

    src: str
    dst: str
    transmitted: int
    replies: dict[int, float]

    @property
    def last_answered(self) -> int:
        return max(self.replies, default=0)

    @property
    def lost(self) -> list[int]:
        """Sequence numbers below the last answered one that never got a reply."""
        return [seq for seq in range(1, self.last_answered + 1) if seq not in self.replies]

    @property
    def unanswered_tail(self) -> int:
        return self.transmitted - self.last_answered

    def outage(self) -> float:
        """The longest time between two consecutive replies, in seconds (a loss shows as a long gap)."""
        times = [self.replies[seq] for seq in sorted(self.replies)]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def summary(self) -> str:
        return (f"{self.src}->{self.dst}: sent {self.transmitted}, answered {len(self.replies)}, "
                f"lost {len(self.lost)}, tail {self.unanswered_tail}, longest gap {self.outage():.3f} s")


class PingMesh:
    """`ping -i 0.01` from every pod to every other pod, output to files (a full pipe would slow ping)."""

    def __init__(self, lab: RotationLab, pairs: list[tuple[str, str]] | None = None) -> None:
        names = sorted(lab.pods)
        self.pairs = pairs or [(a, b) for a in names for b in names if a != b]
        self._lab = lab
        self._procs: dict[tuple[str, str], tuple[subprocess.Popen[bytes], Path]] = {}

    def start(self) -> None:
        for src, dst in self.pairs:
            out = self._lab.tmp / f"ping-{src}-{dst}.txt"
            with open(out, "wb") as sink:
                proc = netns.popen(self._lab.pods[src].netns,
                                   ["ping", "-n", "-D", "-i", PING_INTERVAL, str(self._lab.pods[dst].ip)],
                                   stdout=sink, stderr=subprocess.STDOUT)
            self._procs[(src, dst)] = (proc, out)

    def stop(self) -> dict[tuple[str, str], PingResult]:
        for proc, _ in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        results = {}
        for (src, dst), (proc, out) in self._procs.items():
            proc.wait(timeout=10)
            text = out.read_text()
            summary = _SUMMARY.search(text)
            assert summary, f"ping {src}->{dst} printed no summary: {text[-300:]}"
            replies = {int(seq): float(at) for at, seq in _REPLY.findall(text)}
            results[(src, dst)] = PingResult(src, dst, int(summary.group(1)), replies)
        self._procs.clear()
        return results

    def kill(self) -> None:
        for proc, _ in self._procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def ping_mesh(lab: RotationLab, pairs: list[tuple[str, str]] | None = None) -> Iterator[PingMesh]:
    mesh = PingMesh(lab, pairs)
    try:
        mesh.start()
        yield mesh
    finally:
        mesh.kill()


@dataclass(frozen=True)
class StreamResult:
    """The receiver's and the sender's reports."""

    received: dict[str, Any]
    sent: dict[str, Any]


class TcpStream:
    """A paced TCP stream (4 KiB every 10 ms) from one pod to another, on port 5201."""

    PORT = 5201

    def __init__(self, lab: RotationLab, src: str, dst: str) -> None:
        self._lab = lab
        self.src, self.dst = src, dst
        self._receiver: subprocess.Popen[str] | None = None
        self._sender: subprocess.Popen[str] | None = None

    def _script(self, pod: str, mode: str) -> subprocess.Popen[str]:
        argv = [sys.executable, str(STREAM_SCRIPT), mode, str(self._lab.pods[self.dst].ip), str(self.PORT)]
        return netns.popen(self._lab.pods[pod].netns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)

    def start(self) -> None:
        self._receiver = self._script(self.dst, "recv")
        assert self._receiver.stdout is not None
        assert self._receiver.stdout.readline().strip() == "listening", _stderr(self._receiver)
        self._sender = self._script(self.src, "send")

    def stop(self) -> StreamResult:
        assert self._sender is not None and self._receiver is not None
        self._sender.send_signal(signal.SIGTERM)
        sent_out, sent_err = self._sender.communicate(timeout=60)
        received_out, received_err = self._receiver.communicate(timeout=60)
        assert self._sender.returncode == 0, f"sender failed: {sent_err.strip()[-500:]}"
        assert self._receiver.returncode == 0, f"receiver failed: {received_err.strip()[-500:]}"
        return StreamResult(json.loads(received_out.splitlines()[-1]), json.loads(sent_out.splitlines()[-1]))

    def kill(self) -> None:
        for proc in (self._sender, self._receiver):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()


def _stderr(proc: subprocess.Popen[str]) -> str:
    stream: IO[str] | None = proc.stderr
    if proc.poll() is None or stream is None:
        return "(still running)"
    return stream.read()[-500:]


@contextlib.contextmanager
def tcp_stream(lab: RotationLab, src: str, dst: str) -> Iterator[TcpStream]:
    stream = TcpStream(lab, src, dst)
    try:
        stream.start()
        yield stream
    finally:
        stream.kill()


class UnderlayTap(UnderlayCapture):
    """The lab's underlay capture into the rotation lab's tmp dir, named for what it holds."""

    def __init__(self, lab: RotationLab, name: str, snaplen: int) -> None:
        super().__init__(lab.name, lab.tmp / f"{name}.pcap", snaplen)


@contextlib.contextmanager
def underlay_tap(lab: RotationLab, name: str, snaplen: int = 0) -> Iterator[UnderlayTap]:
    """A running capture for the block (snaplen 0: whole frames; 160 bytes hold every header we read)."""
    with UnderlayTap(lab, name, snaplen) as tap:
        yield tap


def since(pcap: bytes, wall_time: float) -> bytes:
    """The frames of `pcap` captured at or after `wall_time` (seconds since the epoch), as a pcap."""
    parsed = parse_pcap(pcap)
    cut = int(wall_time * 1e9)
    return build_pcap(((r.timestamp_ns, r.data) for r in parsed.records if r.timestamp_ns >= cut),
                      linktype=parsed.linktype, snaplen=max(parsed.snaplen, 1), nanosecond=parsed.nanosecond)


def analyse(lab: RotationLab, pcap: bytes) -> WireReport:
    return analyse_capture(pcap, lab.pod_cidrs())


def assert_no_loss(
    results: dict[tuple[str, str], PingResult], pairs: list[tuple[str, str]] | None = None
) -> None:
    """Every ping (of `pairs`, default all) got every reply, bar the few in flight when it was stopped."""
    for pair in pairs or list(results):
        result = results[pair]
        assert result.transmitted > 0 and not result.lost, result.summary()
        assert result.unanswered_tail <= PING_TAIL_ALLOWANCE, result.summary()
