"""`ciphermesh bench esp`: CPU cost per packet of the ESP core beside the bare cipher calls."""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from ciphermesh.bench.esp import DEFAULT_ALGOS, run_esp_bench
from ciphermesh.bench.esp_report import as_json, goal_verdict, machine, markdown_table, rich_table
from ciphermesh.cli.bench_lab import register_lab
from ciphermesh.cli.errors import CliError
from ciphermesh.keys import ALGO_CHOICES

_OUTPUTS = ("table", "markdown", "json")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `bench` and its `esp` subcommand."""
    bench = subparsers.add_parser("bench", help="micro-benchmarks of the protocol cores")
    targets = bench.add_subparsers(dest="bench_target", metavar="TARGET", required=True)
    esp = targets.add_parser("esp", help="ESP encapsulation/decapsulation against bare AEAD calls")
    esp.add_argument(
        "--sizes",
        default="64,1400,8000",
        metavar="N,N,...",
        help="inner packet sizes in bytes (default 64,1400,8000)",
    )
    esp.add_argument(
        "--seconds",
        type=float,
        default=0.5,
        metavar="S",
        help="CPU seconds spent measuring each operation at each size (default 0.5)",
    )
    esp.add_argument(
        "--repeats",
        type=int,
        default=7,
        metavar="N",
        help="repeats per operation; the table shows their median (default 7)",
    )
    esp.add_argument(
        "--algo",
        dest="algos",
        action="append",
        metavar="ALGO",
        help="an algorithm as `encryption key generate --algo` names it; repeatable "
        "(default rfc4106-gcm-aes and cbc-aes-sha256)",
    )
    esp.add_argument("-o", "--output", choices=_OUTPUTS, default="table")
    esp.set_defaults(func=_bench_esp)
    register_lab(targets)


def _bench_esp(args: argparse.Namespace) -> int:
    sizes = _parse_sizes(args.sizes)
    algos = tuple(args.algos or DEFAULT_ALGOS)
    for algo in algos:
        if algo not in ALGO_CHOICES:
            raise CliError(f"--algo: unknown algorithm {algo!r}; choose one of {', '.join(ALGO_CHOICES)}")
    if args.seconds <= 0 or args.repeats < 1:
        raise CliError("--seconds must be positive and --repeats at least 1")
    result = run_esp_bench(sizes, algos, seconds=args.seconds, repeats=args.repeats)
    if args.output == "json":
        print(json.dumps(as_json(result), indent=2))
        return 0
    host = machine()
    header = (
        f"{host['cpu']}, nproc {host['nproc']}, Python {host['python']}, "
        f"cryptography {host['cryptography']}, {host['openssl']}"
    )
    if args.output == "markdown":
        print(f"{header}\n\n{markdown_table(result)}\n\n{goal_verdict(result)}")
        return 0
    console = Console()
    console.print(header)
    console.print(rich_table(result))
    console.print(goal_verdict(result))
    return 0


def _parse_sizes(text: str) -> tuple[int, ...]:
    sizes = []
    for part in text.split(","):
        if not part.strip().isdigit() or not 20 <= int(part) <= 65535:
            raise CliError(f"--sizes: {part.strip()!r} is not a packet size in bytes (20..65535)")
        sizes.append(int(part))
    return tuple(sizes)
