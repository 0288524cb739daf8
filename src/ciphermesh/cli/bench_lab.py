"""`ciphermesh bench lab`: pod to pod across two lab nodes per path, beside the wireguard-go anchor."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from rich.console import Console

from ciphermesh.bench.lab import DEFAULT_SCENARIOS, SCENARIOS, run_lab_bench, select_scenarios
from ciphermesh.bench.lab_measure import BenchError
from ciphermesh.bench.lab_report import as_json, machine_line, markdown_table, rich_table
from ciphermesh.cli.errors import CliError
from ciphermesh.lab.info import LabError
from ciphermesh.lab.netns import NetnsError

_OUTPUTS = ("table", "markdown", "json")


def register_lab(targets: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `lab` to `bench`'s subcommands."""
    lab = targets.add_parser("lab", help="throughput, CPU per GB and RTT pod to pod across two lab nodes")
    lab.add_argument("--seconds", type=int, default=10, metavar="S",
                     help="length of each iperf3 TCP stream (default 10)")
    lab.add_argument("--repeats", type=int, default=3, metavar="N",
                     help="round-robin repeats per path; the table shows medians (default 3)")
    lab.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS), metavar="NAME,...",
                     help=f"paths to measure, from {', '.join(SCENARIOS)} "
                          f"(default {','.join(DEFAULT_SCENARIOS)})")
    lab.add_argument("-o", "--output", choices=_OUTPUTS, default="table")
    lab.add_argument("--json-file", type=Path, metavar="PATH",
                     help="also write the whole result, every repeat, as JSON to PATH")
    lab.set_defaults(func=_bench_lab)


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def _bench_lab(args: argparse.Namespace) -> int:
    if args.seconds < 1 or args.repeats < 1:
        raise CliError("--seconds and --repeats must be at least 1")
    names = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    try:
        scenarios = select_scenarios(names)
    except BenchError as exc:
        raise CliError(f"--scenarios: {exc}") from None
    if os.geteuid() != 0:
        raise CliError("bench lab builds network namespaces: run it as root")
    missing = sorted({tool for scenario in scenarios for tool in scenario.tools if not shutil.which(tool)})
    if missing:
        raise CliError(f"bench lab needs {', '.join(missing)} on PATH (Debian: iperf3, iputils-ping, "
                       "util-linux, iproute2, wireguard-go, wireguard-tools)")
    try:
        result = run_lab_bench(names, args.seconds, args.repeats, _progress)
    except (BenchError, LabError, NetnsError) as exc:
        raise CliError(str(exc)) from None
    report = json.dumps(as_json(result), indent=2)
    if args.json_file is not None:
        try:
            args.json_file.write_text(report + "\n")
        except OSError as exc:
            raise CliError(f"--json-file {args.json_file}: {exc.strerror}") from None
    if args.output == "json":
        print(report)
    elif args.output == "markdown":
        print(markdown_table(result))
    else:
        console = Console()
        console.print(machine_line(result))
        console.print(rich_table(result))
    return 0
