"""The lab benchmark: parsing, arithmetic, a real short run, and teardown also when interrupted."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from ciphermesh.bench import lab as bench_lab
from ciphermesh.bench.lab import PathResult, Sample, run_lab_bench, select_scenarios
from ciphermesh.bench.lab_measure import (
    CLOCK_TICKS,
    BenchError,
    CpuReading,
    IperfResult,
    PingResult,
    machine_seconds,
    parse_iperf,
    parse_ping,
    percentile,
)
from ciphermesh.bench.lab_scenario import Endpoints
from ciphermesh.cli.main import main as cli_main
from ciphermesh.lab import netns
from ciphermesh.lab.processes import pid_alive
from ciphermesh.lab.state import lab_root

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
_OURS = re.compile(r"^b[nvw][0-9a-f]{4}($|-|w[cs]\.sock$)")

PING_OUTPUT = """PING 10.0.1.2 (10.0.1.2) 56(84) bytes of data.
64 bytes from 10.0.1.2: icmp_seq=1 ttl=62 time=0.300 ms
64 bytes from 10.0.1.2: icmp_seq=2 ttl=62 time=0.100 ms
64 bytes from 10.0.1.2: icmp_seq=4 ttl=62 time=2.00 ms

--- 10.0.1.2 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 15ms
rtt min/avg/max/mdev = 0.100/0.800/2.000/0.850 ms
"""


def test_parse_ping_uses_each_reply() -> None:
    result = parse_ping(PING_OUTPUT)
    assert result.sent == 4 and result.rtts_ms == (0.3, 0.1, 2.0)
    assert result.loss == pytest.approx(0.25)
    assert result.avg_ms == pytest.approx(0.8)
    assert (result.p50_ms, result.p99_ms) == (0.3, 2.0)


def test_parse_ping_without_replies_or_summary_is_an_error() -> None:
    with pytest.raises(BenchError, match="no replies out of 5"):
        parse_ping("5 packets transmitted, 0 received, 100% packet loss, time 40ms\n")
    with pytest.raises(BenchError, match="no summary"):
        parse_ping("ping: connect: Network is unreachable\n")


def test_percentile_is_nearest_rank() -> None:
    values = [float(x) for x in range(100, 0, -1)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0


def test_parse_iperf_takes_the_receiver_side() -> None:
    report = {"end": {"sum_sent": {"bits_per_second": 9e9, "bytes": 11, "retransmits": 4},
                      "sum_received": {"bits_per_second": 8e9, "bytes": 10_000_000_000}}}
    assert parse_iperf(json.dumps(report)) == IperfResult(8e9, 10_000_000_000, 4)


def test_parse_iperf_errors() -> None:
    with pytest.raises(BenchError, match="iperf3: unable to connect"):
        parse_iperf(json.dumps({"start": {}, "error": "unable to connect to server"}))
    with pytest.raises(BenchError, match="no JSON"):
        parse_iperf("iperf3: error - unable to connect")
    with pytest.raises(BenchError, match="sum_received"):
        parse_iperf(json.dumps({"end": {}}))
    empty = {"end": {"sum_sent": {}, "sum_received": {"bits_per_second": 0, "bytes": 0}}}
    with pytest.raises(BenchError, match="received nothing"):
        parse_iperf(json.dumps(empty))


def test_machine_busy_counts_user_nice_system_irq_softirq_and_idle_iowait() -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat = "cpu  100 10 50 9000 77 5 35 88 60 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
    assert machine_seconds(stat) == pytest.approx((200 / CLOCK_TICKS, 9077 / CLOCK_TICKS))
    assert min(machine_seconds()) > 0


def test_process_cpu_is_summed_over_processes_seen_at_both_readings() -> None:
    before = CpuReading(machine=1.0, idle=1.0, processes={1: 2.0, 2: 5.0, 3: 1.0})
    after = CpuReading(machine=4.0, idle=1.0, processes={1: 3.5, 2: 5.25, 4: 9.0})
    assert after.processes_since(before) == pytest.approx(1.75)


def _sample(gbit: float, tunnel: float | None, machine: float, rtt: float) -> Sample:
    received = int(gbit * 1e9 / 8 * 10)
    return Sample(IperfResult(gbit * 1e9, received, 3), 10.0, tunnel, machine, machine / 4, 0.5,
                  PingResult(2, (rtt, rtt)))


def test_path_medians_and_cpu_per_gb() -> None:
    path = PathResult("p", "a path", (_sample(1.0, 5.0, 10.0, 0.2), _sample(2.0, 10.0, 20.0, 0.1),
                                      _sample(8.0, 20.0, 40.0, 0.3)))
    assert path.gbit_per_s == pytest.approx(2.0)
    # 1 Gbit/s for 10 s is 1.25 GB: 5 CPU-s -> 4 per GB; 2 Gbit/s: 2.5 GB -> 4; 8 Gbit/s: 10 GB -> 2.
    assert path.tunnel_cpu_per_gb == pytest.approx(4.0)
    assert path.machine_cpu_per_gb == pytest.approx(8.0)
    assert path.rtt_avg_ms == pytest.approx(0.2)
    assert path.samples[0].idle_share == pytest.approx(0.2)
    kernel_only = PathResult("k", "kernel", (_sample(1.0, None, 10.0, 0.1),))
    assert kernel_only.tunnel_cpu_per_gb is None


def test_scenario_selection() -> None:
    assert [s.name for s in select_scenarios(["ipsec", "wireguard-go"])] == ["ipsec", "wireguard-go"]
    with pytest.raises(BenchError, match="unknown scenario 'kernel-esp'"):
        select_scenarios(["kernel-esp"])
    with pytest.raises(BenchError, match="once"):
        select_scenarios(["veth", "veth"])


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["bench", "lab", "--scenarios", "disabled,nope"]) == 1
    assert "unknown scenario 'nope'" in capsys.readouterr().err
    assert cli_main(["bench", "lab", "--seconds", "0"]) == 1
    assert "at least 1" in capsys.readouterr().err


def _our_residue() -> set[str]:
    """Namespaces, lab directories and wireguard-go sockets named as this benchmark names them."""
    found = {f"netns:{name}" for name in netns.names() if _OURS.match(name)}
    root = lab_root()
    if root.exists():
        found |= {f"lab:{entry.name}" for entry in root.iterdir() if _OURS.match(entry.name)}
    sockets = Path("/var/run/wireguard")
    if sockets.exists():
        found |= {f"uapi:{entry.name}" for entry in sockets.iterdir() if _OURS.match(entry.name)}
    return found


@pytest.mark.netns
@pytest.mark.slow
@needs_root
def test_disabled_lab_run_is_complete_and_cleaned_up(capsys: pytest.CaptureFixture[str]) -> None:
    residue = _our_residue()
    code = cli_main(["bench", "lab", "--seconds", "1", "--repeats", "1", "--scenarios", "disabled",
                     "-o", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert (report["seconds"], report["repeats"]) == (1, 1)
    assert report["machine"]["nproc"] >= 1 and report["machine"]["cpu"]
    assert 0 <= report["machine"]["idleShare"] <= 1
    assert len(report["machine"]["loadavg"]) == 3
    [path] = report["paths"]
    assert path["name"] == "disabled"
    median = path["median"]
    for key in ("gbitPerSecond", "machineCpuSecondsPerGB", "rttAvgMs", "rttP50Ms", "rttP99Ms"):
        assert median[key] > 0, key
    # The agents are the lab's tunnel processes; the kernel carries VXLAN, so they may use almost nothing.
    assert median["tunnelCpuSecondsPerGB"] >= 0
    [sample] = path["samples"]
    assert sample["bytesReceived"] > 0 and sample["ping"]["received"] > 0
    assert sample["transferSeconds"] >= 1
    assert median["rttP50Ms"] <= median["rttP99Ms"]
    assert _our_residue() == residue


@pytest.mark.netns
@pytest.mark.slow
@needs_root
def test_wireguard_go_anchor_counts_its_processes() -> None:
    residue = _our_residue()
    result = run_lab_bench(["wireguard-go"], seconds=1, repeats=1, progress=lambda message: None)
    [path] = result.paths
    assert path.gbit_per_s > 0 and path.rtt_p99_ms > 0
    assert path.tunnel_cpu_per_gb is not None and path.tunnel_cpu_per_gb > 0
    assert path.machine_cpu_per_gb > 0
    assert _our_residue() == residue


@pytest.mark.netns
@pytest.mark.slow
@needs_root
def test_node_to_node_path_counts_the_engines_not_iperf(monkeypatch: pytest.MonkeyPatch) -> None:
    residue = _our_residue()
    seen: list[tuple[str, str, list[str]]] = []
    measure = bench_lab.measure

    def recording(ends: Endpoints, seconds: int) -> Sample:
        sample = measure(ends, seconds)
        assert ends.tunnel_pids is not None
        commands = [Path(f"/proc/{pid}/comm").read_text().strip() for pid in ends.tunnel_pids()]
        seen.append((ends.client_netns, ends.server_ip, commands))
        return sample

    monkeypatch.setattr(bench_lab, "measure", recording)
    result = run_lab_bench(["ipsec-node"], seconds=1, repeats=1, progress=lambda message: None)
    [path] = result.paths
    assert path.gbit_per_s > 0 and path.tunnel_cpu_per_gb is not None and path.tunnel_cpu_per_gb > 0
    [(client, server_ip, commands)] = seen
    assert client.endswith("-node-1") and server_ip.startswith("172.")  # the nodes themselves
    assert commands and "iperf3" not in commands and "ping" not in commands
    assert _our_residue() == residue


@pytest.mark.netns
@pytest.mark.slow
@needs_root
def test_interrupted_run_tears_everything_down(monkeypatch: pytest.MonkeyPatch) -> None:
    residue = _our_residue()
    seen: list[int] = []

    def interrupted(ends: Endpoints, seconds: int) -> Sample:
        assert ends.tunnel_pids is not None
        seen.extend(ends.tunnel_pids())
        if len(seen) > 2:  # the second path: Ctrl-C in the middle of the run
            raise KeyboardInterrupt
        return _sample(1.0, 1.0, 1.0, 0.1)

    monkeypatch.setattr(bench_lab, "measure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_lab_bench(["wireguard-go", "ipsec"], seconds=1, repeats=1, progress=lambda message: None)
    assert len(seen) >= 4  # two wireguard-go processes, then the ipsec lab's two agents
    assert not [pid for pid in seen if pid_alive(pid)]
    assert _our_residue() == residue
