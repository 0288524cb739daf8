"""Presenting an ESP benchmark run: a rich table, a Markdown table, JSON, and the machine it ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import cryptography
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from rich import box
from rich.table import Table

from ciphermesh.bench.esp import GOAL_RATIO, GOAL_SIZE, EspBenchResult, EspBenchRow

COLUMNS: tuple[str, ...] = (
    "algorithm",
    "bytes",
    "encap µs",
    "decap µs",
    "bare enc µs",
    "bare dec µs",
    "ratio",
    "Gbit/s",
    "CPU-s/GB",
)

# The same columns with two-line headers, so the table fits an 80-column terminal.
_TERMINAL_HEADERS = (
    "algorithm",
    "bytes",
    "encap\nµs",
    "decap\nµs",
    "bare enc\nµs",
    "bare dec\nµs",
    "ratio",
    "Gbit/s",
    "CPU-s\nper GB",
)


def row_cells(row: EspBenchRow) -> tuple[str, ...]:
    """One row's cells, in COLUMNS order."""
    return (
        row.algo,
        str(row.size),
        f"{row.encap_us:.2f}",
        f"{row.decap_us:.2f}",
        f"{row.bare_encrypt_us:.2f}",
        f"{row.bare_decrypt_us:.2f}",
        f"{row.ratio:.2f}",
        f"{row.gbit_per_s:.2f}",
        f"{row.cpu_seconds_per_gb:.2f}",
    )


def legend(result: EspBenchResult) -> list[str]:
    """What the columns mean, including which bare primitive each algorithm is compared with."""
    references = dict.fromkeys(f"{row.algo}: {row.reference}" for row in result.rows)
    return [
        f"median of {result.repeats} interleaved repeats, process CPU time, "
        f"{result.seconds:g} s per operation",
        "bytes: inner packet size; bare enc/dec: the cipher calls alone on the same size, objects reused "
        f"({'; '.join(references)})",
        "ratio: (encap + decap) / (bare enc + bare dec); Gbit/s and CPU-s/GB: both tunnel ends "
        "(encap + decap) on one core",
    ]


def rich_table(result: EspBenchResult) -> Table:
    """The run as a table for a terminal."""
    table = Table(
        title="ESP core (sans-IO), µs per packet",
        caption="\n".join(legend(result)),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        caption_justify="left",
    )
    for index, name in enumerate(_TERMINAL_HEADERS):
        # The algorithm names are what a user passes to --algo: never cut them.
        table.add_column(name, justify="left" if index == 0 else "right", no_wrap=index == 0)
    for row in result.rows:
        table.add_row(*row_cells(row))
    return table


def markdown_table(result: EspBenchResult) -> str:
    """The run as a Markdown table with its legend, for docs/benchmarks.md."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row_cells(row)) + " |" for row in result.rows]
    lines += ["", *(f"- {line}" for line in legend(result))]
    return "\n".join(lines)


def as_json(result: EspBenchResult) -> dict[str, Any]:
    """The run as plain data, for programs."""
    return {
        "seconds": result.seconds,
        "repeats": result.repeats,
        "machine": machine(),
        "rows": [
            {
                "algo": r.algo,
                "size": r.size,
                "encapUs": r.encap_us,
                "decapUs": r.decap_us,
                "reference": r.reference,
                "bareEncryptUs": r.bare_encrypt_us,
                "bareDecryptUs": r.bare_decrypt_us,
                "ratio": r.ratio,
                "gbitPerS": r.gbit_per_s,
                "cpuSecondsPerGB": r.cpu_seconds_per_gb,
            }
            for r in result.rows
        ],
        "goal": goal_verdict(result),
    }


def goal_verdict(result: EspBenchResult) -> str:
    """One line: whether AES-GCM-128 encap+decap at 1400 bytes stays within 2x the bare AEAD calls."""
    row = result.goal_row()
    if row is None:
        return f"goal not judged: rfc4106-gcm-aes at {GOAL_SIZE} bytes was not measured"
    met = "met" if row.ratio <= GOAL_RATIO else "NOT met"
    return (
        f"goal (rfc4106-gcm-aes, {GOAL_SIZE} B: encap+decap within {GOAL_RATIO:g}x bare AESGCM "
        f"encrypt+decrypt): {met}, {row.ratio:.2f}x"
    )


def machine() -> dict[str, str]:
    """CPU model, core count and the software versions that decide the numbers."""
    return {
        "cpu": _cpu_model(),
        "nproc": str(len(os.sched_getaffinity(0))),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "openssl": openssl_backend.openssl_version_text(),
    }


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"
