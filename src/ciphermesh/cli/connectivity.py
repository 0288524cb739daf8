"""`ciphermesh connectivity test`: pod-to-pod probes checked on the underlay; exit 0 only on a pass."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from ciphermesh.cli.errors import CliError
from ciphermesh.lab.capture import CaptureError
from ciphermesh.lab.cluster import load_lab
from ciphermesh.lab.connectivity import PROBE_TIMEOUT, ConnectivityResult, run_connectivity_test
from ciphermesh.lab.info import LabError
from ciphermesh.lab.state import LabNameError
from ciphermesh.store.errors import StoreError

DEFAULT_LAB = "cm"


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def _print_report(result: ConnectivityResult) -> None:
    console = Console(highlight=False)
    table = Table("SOURCE", "DESTINATION", "PROTOCOL", "RESULT", "RTT", box=None)
    for probe in result.probes:
        rtt = f"{probe.rtt_ms:.3f} ms" if probe.rtt_ms is not None else "-"
        outcome = "ok" if probe.ok else f"[red]FAIL[/]: {probe.error}"
        src = f"{probe.src_node}{' host' if probe.src_host else ''} ({probe.src_ip})"
        dst = f"{probe.dst_node}{' host' if probe.dst_host else ''} ({probe.dst_ip})"
        table.add_row(src, dst, probe.protocol.upper(), outcome, rtt)
    console.print(table)
    for line in result.summary():
        console.print(line, soft_wrap=True)
    total = len(result.probes)
    if result.verdict.passed:
        suffix = " (sanity mode: plaintext seen, as it must be)" if result.mode == "disabled" else ""
        console.print(f"✅ All {total} tests passed{suffix}")
        return
    failed = sum(1 for probe in result.probes if not probe.ok)
    wire = len(result.verdict.reasons) - failed
    parts = [f"{failed} of {total} tests failed"] if failed else [f"all {total} probes answered"]
    if wire:
        parts.append(f"the underlay shows {wire} problem{'s' if wire > 1 else ''}")
    console.print(f"❌ Connectivity test failed: {', '.join(parts)}")
    for reason in result.verdict.reasons:
        console.print(f"  - {reason}", soft_wrap=True)


def _test(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise CliError(f"--timeout {args.timeout:g}: give a positive number of seconds")
    try:
        info = load_lab(args.lab)
        result = run_connectivity_test(info, _progress, timeout=args.timeout)
    except (LabError, LabNameError, CaptureError, StoreError) as exc:
        raise CliError(f"connectivity test: {exc}") from None
    if args.output == "json":
        print(json.dumps(result.as_dict(), indent=2))
    else:
        _print_report(result)
    return 0 if result.verdict.passed else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    connectivity = sub.add_parser(
        "connectivity", help="check pod-to-pod traffic and its encryption on the wire"
    )
    commands = connectivity.add_subparsers(dest="connectivity_command", metavar="SUBCOMMAND", required=True)
    test = commands.add_parser(
        "test", help="a pod on every node; ICMP, TCP, UDP between every pair while the underlay is captured"
    )
    test.add_argument("--lab", default=DEFAULT_LAB, help=f"lab name (default {DEFAULT_LAB})")
    test.add_argument("-o", "--output", choices=("table", "json"), default="table")
    test.add_argument("--timeout", type=float, default=PROBE_TIMEOUT,
                      help=f"seconds each probe may take (default {PROBE_TIMEOUT:g})")
    test.set_defaults(func=_test)
