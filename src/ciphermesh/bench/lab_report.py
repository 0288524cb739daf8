"""Presenting a lab benchmark run: a rich table, a Markdown table and JSON, with the machine's facts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.table import Table

from ciphermesh.bench.lab import PING_COUNT, PING_INTERVAL_S, LabBenchResult, PathResult, Sample

COLUMNS: tuple[str, ...] = (
    "path", "Gbit/s", "CPU-s/GB tunnel procs", "CPU-s/GB machine",
    "RTT avg ms", "RTT p50 ms", "RTT p99 ms", "TCP retransmits",
)


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def row_cells(path: PathResult, title: str) -> tuple[str, ...]:
    """One path's medians, in COLUMNS order, headed by `title`."""
    return (
        title, _number(path.gbit_per_s), _number(path.tunnel_cpu_per_gb, 1),
        _number(path.machine_cpu_per_gb, 1), _number(path.rtt_avg_ms, 3), _number(path.rtt_p50_ms, 3),
        _number(path.rtt_p99_ms, 3), f"{path.retransmits:.0f}",
    )


def machine_line(result: LabBenchResult) -> str:
    facts = result.machine
    load = " ".join(f"{x:.2f}" for x in facts.loadavg)
    end = " ".join(f"{x:.2f}" for x in result.loadavg_end)
    return (f"{facts.cpu}, nproc {facts.nproc}, kernel {facts.kernel}; load average {load} at start, "
            f"{end} at end; other work kept {result.background_cores:.2f} CPUs busy in the second "
            f"before each transfer and {result.idle_share:.0%} of CPU time was idle during transfers "
            f"(medians); started {result.started:%Y-%m-%d %H:%M} UTC")


def legend(result: LabBenchResult) -> list[str]:
    """What the columns mean."""
    return [
        "paths: " + "; ".join(f"{path.name} = {path.label}" for path in result.paths),
        f"median of {result.repeats} round-robin repeats; one iperf3 TCP stream for {result.seconds} s "
        "(rate and bytes as the receiver counts them), then "
        f"ping -c {PING_COUNT} -i {PING_INTERVAL_S} (nearest-rank percentiles)",
        "CPU-s/GB (tunnel procs): utime+stime of the processes that carry the packets, both ends (lab: "
        "the processes in the node namespaces but iperf3 and ping, i.e. the agents incl. the userspace "
        "engines' threads; "
        "wireguard-go: its two processes); '-' where the kernel alone carries them",
        "CPU-s/GB (machine): user+nice+system+irq+softirq of all CPUs from /proc/stat over the transfer, "
        "incl. iperf3 at both ends, softirq work of kernel VXLAN and veth, and anything else running; "
        "when nothing was idle it is nproc x seconds / GB, an upper bound set by other work",
    ]


def rich_table(result: LabBenchResult) -> Table:
    table = Table(title="Pod to pod: one TCP stream, CPU per GB received, ping RTT",
                  caption="\n".join(legend(result)))
    for index, name in enumerate(COLUMNS):
        table.add_column(name, justify="left" if index == 0 else "right")
    for path in result.paths:
        table.add_row(*row_cells(path, path.name))
    return table


def markdown_table(result: LabBenchResult) -> str:
    """The run as a Markdown table with its machine line and legend, for docs/benchmarks.md."""
    lines = [f"Machine: {machine_line(result)}.", "",
             "| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
    lines += ["| " + " | ".join(row_cells(path, path.label)) + " |" for path in result.paths]
    lines += ["", *(f"- {line}" for line in legend(result))]
    return "\n".join(lines)


def _sample_json(sample: Sample) -> dict[str, Any]:
    return {
        "gbitPerSecond": sample.gbit_per_s,
        "bytesReceived": sample.iperf.bytes_received,
        "retransmits": sample.iperf.retransmits,
        "transferSeconds": sample.transfer_seconds,
        "tunnelCpuSeconds": sample.tunnel_cpu_seconds,
        "machineCpuSeconds": sample.machine_cpu_seconds,
        "machineIdleSeconds": sample.machine_idle_seconds,
        "tunnelCpuSecondsPerGB": sample.tunnel_cpu_per_gb,
        "machineCpuSecondsPerGB": sample.machine_cpu_per_gb,
        "backgroundCores": sample.background_cores,
        "ping": {"sent": sample.ping.sent, "received": len(sample.ping.rtts_ms),
                 "avgMs": sample.ping.avg_ms, "p50Ms": sample.ping.p50_ms, "p99Ms": sample.ping.p99_ms},
    }


def _path_json(path: PathResult) -> dict[str, Any]:
    return {
        "name": path.name,
        "label": path.label,
        "median": {
            "gbitPerSecond": path.gbit_per_s,
            "tunnelCpuSecondsPerGB": path.tunnel_cpu_per_gb,
            "machineCpuSecondsPerGB": path.machine_cpu_per_gb,
            "rttAvgMs": path.rtt_avg_ms,
            "rttP50Ms": path.rtt_p50_ms,
            "rttP99Ms": path.rtt_p99_ms,
            "retransmits": path.retransmits,
        },
        "samples": [_sample_json(sample) for sample in path.samples],
    }


def as_json(result: LabBenchResult) -> dict[str, Any]:
    return {
        "seconds": result.seconds,
        "repeats": result.repeats,
        "started": result.started.isoformat(),
        "machine": asdict(result.machine) | {"loadavgEnd": list(result.loadavg_end),
                                             "backgroundCores": result.background_cores,
                                             "idleShare": result.idle_share},
        "paths": [_path_json(path) for path in result.paths],
    }
