"""Pod-to-pod benchmark across paths: one iperf3 TCP stream, CPU per GB and ping RTT, repeats interleaved."""

from __future__ import annotations

import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from ciphermesh.bench.lab_cluster_scenario import LabScenario
from ciphermesh.bench.lab_measure import (
    BenchError,
    CpuReading,
    IperfResult,
    MachineFacts,
    PingResult,
    load_average,
    machine_seconds,
    parse_iperf,
    parse_ping,
)
from ciphermesh.bench.lab_pair_scenarios import VethScenario, WireguardGoScenario
from ciphermesh.bench.lab_scenario import Endpoints, Progress, Scenario
from ciphermesh.lab import netns

SCENARIOS: dict[str, Scenario] = {scenario.name: scenario for scenario in (
    VethScenario(),
    LabScenario("disabled", "lab, encryption disabled (kernel VXLAN)", ()),
    LabScenario("ipsec", "lab, IPsec userspace engine",
                ("encryption.enabled=true", "encryption.type=ipsec", "encryption.engine=userspace")),
    # Only where the kernel has ESP (a VM here: `ciphermesh lab vm -- ciphermesh bench lab ...`).
    LabScenario("ipsec-kernel", "lab, IPsec kernel engine (XFRM)",
                ("encryption.enabled=true", "encryption.type=ipsec", "encryption.engine=kernel")),
    LabScenario("wireguard", "lab, WireGuard userspace engine",
                ("encryption.enabled=true", "encryption.type=wireguard", "encryption.engine=userspace")),
    # Only where the kernel has WireGuard (the VM, as ipsec-kernel).
    LabScenario("wireguard-kernel", "lab, WireGuard kernel engine",
                ("encryption.enabled=true", "encryption.type=wireguard", "encryption.engine=kernel")),
    LabScenario("ipsec-node", "lab, IPsec node encryption, node to node",
                ("encryption.enabled=true", "encryption.type=ipsec", "encryption.nodeEncryption=true"),
                host=True),
    LabScenario("wireguard-node", "lab, WireGuard node encryption, node to node",
                ("encryption.enabled=true", "encryption.type=wireguard", "encryption.nodeEncryption=true"),
                host=True),
    WireguardGoScenario(),
)}
DEFAULT_SCENARIOS = ("disabled", "ipsec", "wireguard-go")

IPERF_PORT = 5201
PING_COUNT = 400
PING_INTERVAL_S = "0.005"
BACKGROUND_SAMPLE_S = 1.0
GB = 1e9


@dataclass(frozen=True)
class Sample:
    """One repeat on one path: a TCP stream with the CPU it cost, then a ping run."""

    iperf: IperfResult
    transfer_seconds: float
    tunnel_cpu_seconds: float | None
    machine_cpu_seconds: float
    machine_idle_seconds: float
    background_cores: float
    ping: PingResult

    @property
    def gbit_per_s(self) -> float:
        return self.iperf.bits_per_second / 1e9

    @property
    def gigabytes(self) -> float:
        return self.iperf.bytes_received / GB

    @property
    def tunnel_cpu_per_gb(self) -> float | None:
        return None if self.tunnel_cpu_seconds is None else self.tunnel_cpu_seconds / self.gigabytes

    @property
    def machine_cpu_per_gb(self) -> float:
        return self.machine_cpu_seconds / self.gigabytes

    @property
    def idle_share(self) -> float:
        """How much of the machine's CPU time went unused during the transfer (0 means saturated)."""
        return self.machine_idle_seconds / (self.machine_idle_seconds + self.machine_cpu_seconds)


@dataclass(frozen=True)
class PathResult:
    """Every repeat on one path; the properties are medians over them."""

    name: str
    label: str
    samples: tuple[Sample, ...]

    def median(self, metric: Callable[[Sample], float | None]) -> float | None:
        values = [value for value in map(metric, self.samples) if value is not None]
        return statistics.median(values) if values else None

    def _required(self, metric: Callable[[Sample], float]) -> float:
        return statistics.median(map(metric, self.samples))

    @property
    def gbit_per_s(self) -> float:
        return self._required(lambda s: s.gbit_per_s)

    @property
    def tunnel_cpu_per_gb(self) -> float | None:
        return self.median(lambda s: s.tunnel_cpu_per_gb)

    @property
    def machine_cpu_per_gb(self) -> float:
        return self._required(lambda s: s.machine_cpu_per_gb)

    @property
    def rtt_avg_ms(self) -> float:
        return self._required(lambda s: s.ping.avg_ms)

    @property
    def rtt_p50_ms(self) -> float:
        return self._required(lambda s: s.ping.p50_ms)

    @property
    def rtt_p99_ms(self) -> float:
        return self._required(lambda s: s.ping.p99_ms)

    @property
    def retransmits(self) -> float:
        return self._required(lambda s: s.iperf.retransmits)


@dataclass(frozen=True)
class LabBenchResult:
    """A whole run: its settings, the machine before and after, and each path."""

    seconds: int
    repeats: int
    started: datetime
    machine: MachineFacts
    loadavg_end: tuple[float, float, float]
    paths: tuple[PathResult, ...]

    @property
    def background_cores(self) -> float:
        """Median CPUs busy with other work in the second before each transfer."""
        return statistics.median(s.background_cores for path in self.paths for s in path.samples)

    @property
    def idle_share(self) -> float:
        """Median share of the machine's CPU time left idle during transfers."""
        return statistics.median(s.idle_share for path in self.paths for s in path.samples)


def select_scenarios(names: Sequence[str]) -> list[Scenario]:
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise BenchError(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    if not names or len(set(names)) != len(names):
        raise BenchError("name each scenario once")
    return [SCENARIOS[name] for name in names]


def run_lab_bench(names: Sequence[str], seconds: int, repeats: int, progress: Progress) -> LabBenchResult:
    """Build every path, measure them round-robin `repeats` times for `seconds` each, remove them all."""
    if seconds < 1 or repeats < 1:
        raise BenchError("seconds and repeats must be at least 1")
    scenarios = select_scenarios(names)
    machine = MachineFacts.now()
    started = datetime.now(UTC)
    samples: dict[str, list[Sample]] = {scenario.name: [] for scenario in scenarios}
    stack = ExitStack()
    try:
        endpoints = {scenario.name: stack.enter_context(scenario.build(progress)) for scenario in scenarios}
        for name, ends in endpoints.items():
            _wait_reachable(name, ends)
            stack.enter_context(_iperf_server(name, ends))
        for repeat in range(repeats):
            for scenario in scenarios:
                progress(f"{scenario.name}: run {repeat + 1}/{repeats}")
                samples[scenario.name].append(measure(endpoints[scenario.name], seconds))
    finally:
        progress("tearing down")
        with _sigint_ignored():
            stack.close()
    return LabBenchResult(
        seconds=seconds, repeats=repeats, started=started, machine=machine, loadavg_end=load_average(),
        paths=tuple(PathResult(s.name, s.label, tuple(samples[s.name])) for s in scenarios),
    )


def measure(ends: Endpoints, seconds: int) -> Sample:
    """One TCP stream client to server with the CPU it cost, then the ping RTT."""
    background = _background_cores()
    pids = ends.tunnel_pids() if ends.tunnel_pids is not None else []
    if ends.tunnel_pids is not None and not pids:
        raise BenchError(f"no tunnel processes found for {ends.client_netns} -> {ends.server_ip}")
    argv = ["iperf3", "-c", ends.server_ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-J",
            "--connect-timeout", "5000"]
    before = CpuReading.now(pids)
    started = time.monotonic()
    output = _run(ends.client_netns, argv, timeout=seconds + 30)
    after = CpuReading.now(pids)
    elapsed = time.monotonic() - started
    return Sample(
        iperf=parse_iperf(output.stdout or output.stderr),
        transfer_seconds=elapsed,
        tunnel_cpu_seconds=after.processes_since(before) if ends.tunnel_pids is not None else None,
        machine_cpu_seconds=after.machine - before.machine,
        machine_idle_seconds=after.idle - before.idle,
        background_cores=background,
        ping=ping(ends),
    )


def ping(ends: Endpoints) -> PingResult:
    argv = ["ping", "-n", "-c", str(PING_COUNT), "-i", PING_INTERVAL_S, "-W", "1", ends.server_ip]
    return parse_ping(_run(ends.client_netns, argv, timeout=PING_COUNT * 0.005 + 30).stdout)


def _run(namespace: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return netns.run(namespace, argv, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{argv[0]} in {namespace} did not finish within {timeout:.0f} s") from None


def _background_cores() -> float:
    before, _ = machine_seconds()
    time.sleep(BACKGROUND_SAMPLE_S)
    return (machine_seconds()[0] - before) / BACKGROUND_SAMPLE_S


def _wait_reachable(name: str, ends: Endpoints, attempts: int = 20) -> None:
    # The first packets may wait for neighbour resolution or a WireGuard handshake.
    for _ in range(attempts):
        argv = ["ping", "-n", "-c", "1", "-W", "1", ends.server_ip]
        probe = netns.run(ends.client_netns, argv, check=False)
        if probe.returncode == 0:
            return
    raise BenchError(f"{name}: {ends.server_ip} does not answer ping from {ends.client_netns}")


@contextmanager
def _iperf_server(name: str, ends: Endpoints) -> Iterator[None]:
    server = netns.popen(ends.server_netns, ["iperf3", "-s", "-p", str(IPERF_PORT)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not netns.run(ends.server_netns, ["ss", "-Hltn", f"sport = :{IPERF_PORT}"]).stdout.strip():
            if server.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{name}: iperf3 -s did not start listening in {ends.server_netns}")
            time.sleep(0.05)
        yield
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    # A second Ctrl-C during teardown would otherwise leave namespaces and agents behind.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
