"""What the lab benchmark reads: CPU time from /proc, iperf3's JSON, ping's replies, the machine's facts."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# /proc/stat's cpu line: user nice system idle iowait irq softirq steal; guest time is already in user.
_BUSY_FIELDS = (0, 1, 2, 5, 6)
_IDLE_FIELDS = (3, 4)
_PING_TIME = re.compile(r"\btime[=<]([0-9.]+) ms\b")
_PING_SENT = re.compile(r"^(\d+) packets transmitted, (\d+) received", re.MULTILINE)


class BenchError(RuntimeError):
    """A measurement could not be taken; the message says which and why."""


def machine_seconds(stat_text: str | None = None) -> tuple[float, float]:
    """CPU-seconds of all CPUs since boot: busy (user, nice, system, irq, softirq) and idle (idle, iowait)."""
    text = Path("/proc/stat").read_text() if stat_text is None else stat_text
    first = text.splitlines()[0].split()
    if first[0] != "cpu":
        raise BenchError("/proc/stat does not start with the cpu line")
    ticks = [int(value) for value in first[1:]]
    return (sum(ticks[index] for index in _BUSY_FIELDS) / CLOCK_TICKS,
            sum(ticks[index] for index in _IDLE_FIELDS) / CLOCK_TICKS)


def process_seconds(pid: int) -> float | None:
    """utime + stime of the whole process (every thread) so far, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass(frozen=True)
class CpuReading:
    """The machine's busy and idle CPU time and each watched process's CPU time at one instant."""

    machine: float
    idle: float
    processes: dict[int, float]

    @classmethod
    def now(cls, pids: Iterable[int]) -> CpuReading:
        seconds = {pid: process_seconds(pid) for pid in pids}
        busy, idle = machine_seconds()
        return cls(busy, idle, {pid: s for pid, s in seconds.items() if s is not None})

    def processes_since(self, before: CpuReading) -> float:
        """CPU-seconds the processes watched at both readings used in between (an exited one counts 0)."""
        return sum(self.processes[pid] - used for pid, used in before.processes.items()
                   if pid in self.processes)


@dataclass(frozen=True)
class IperfResult:
    """One iperf3 TCP test as the client reports it."""

    bits_per_second: float
    bytes_received: int
    retransmits: int


def parse_iperf(text: str) -> IperfResult:
    """The received rate and bytes of `iperf3 -c ... -J` output; BenchError if it failed."""
    try:
        report: dict[str, Any] = json.loads(text)
    except ValueError:
        raise BenchError(f"iperf3 printed no JSON: {text.strip()[:120]!r}") from None
    if report.get("error"):
        raise BenchError(f"iperf3: {report['error']}")
    try:
        received = report["end"]["sum_received"]
        sent = report["end"]["sum_sent"]
        result = IperfResult(float(received["bits_per_second"]), int(received["bytes"]),
                             int(sent.get("retransmits", 0)))
    except (KeyError, TypeError, ValueError):
        raise BenchError("iperf3 JSON has no end.sum_received (did the test run?)") from None
    if result.bytes_received <= 0:
        raise BenchError("iperf3 received nothing")
    return result


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile (0 < q <= 100) of a non-empty sample."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class PingResult:
    """Round-trip times of the replies one ping run received, in milliseconds."""

    sent: int
    rtts_ms: tuple[float, ...]

    @property
    def loss(self) -> float:
        return 1 - len(self.rtts_ms) / self.sent

    @property
    def avg_ms(self) -> float:
        return statistics.fmean(self.rtts_ms)

    @property
    def p50_ms(self) -> float:
        return percentile(self.rtts_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.rtts_ms, 99)


def parse_ping(text: str) -> PingResult:
    """Per-reply times and the sent count from iputils ping output (without -q)."""
    summary = _PING_SENT.search(text)
    if summary is None:
        raise BenchError(f"ping printed no summary: {text.strip()[-120:]!r}")
    rtts = tuple(float(match) for match in _PING_TIME.findall(text))
    if not rtts:
        raise BenchError(f"ping: no replies out of {summary[1]}")
    return PingResult(int(summary[1]), rtts)


@dataclass(frozen=True)
class MachineFacts:
    """The machine a run happened on, and how busy it was when the run started."""

    cpu: str
    nproc: int
    kernel: str
    loadavg: tuple[float, float, float]

    @classmethod
    def now(cls) -> MachineFacts:
        return cls(cpu_model(), os.cpu_count() or 0, platform.release(), load_average())


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or "unknown"


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return (one, five, fifteen)
