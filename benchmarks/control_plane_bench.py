"""The Kubernetes control plane beside etcd: lab up time, rotation convergence from the Secret's write
(`kubectl patch secret` / `encryption key set`) to every node on the new SPI, idle CPU and memory.

Builds one IPsec lab per control plane and node count (always torn down), prints one JSON object per
rotation and a summary per lab; `-o markdown` adds the table for docs/benchmarks.md.
Run as root: `.venv/bin/python benchmarks/control_plane_bench.py --nodes 3,20 --rotations 3
--control-plane etcd,kubernetes [--idle 30] [-o markdown]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
from typing import Any

from ciphermesh.bench.control_plane import BenchPlan, markdown, run_bench
from ciphermesh.bench.lab_measure import BenchError


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", default="3,20", help="comma-separated node counts (default 3,20)")
    parser.add_argument("--control-plane", default="etcd,kubernetes",
                        help="comma-separated control planes (default etcd,kubernetes)")
    parser.add_argument("--rotations", type=int, default=3)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle measurement (default 30)")
    parser.add_argument("--grace", type=float, default=3.0, help="keyRotationDuration in seconds (default 3)")
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between looks at every node")
    parser.add_argument("--lab-prefix", default="cb" + secrets.token_hex(2),
                        help="lab names are PREFIX + e|k + the size's index (at most 6 characters)")
    parser.add_argument("-o", "--output", choices=("json", "markdown"), default="json")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the lab builds network namespaces")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s")
    # SIGTERM (and SIGINT, which a background job ignores) unwind through the labs' teardown.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    try:
        plan = BenchPlan(control_planes=tuple(args.control_plane.split(",")),
                         node_counts=tuple(int(n) for n in args.nodes.split(",")), rotations=args.rotations,
                         idle=args.idle, grace=args.grace, poll=args.poll, lab_prefix=args.lab_prefix)
        rows = run_bench(plan, _emit)
    except BenchError as exc:
        raise SystemExit(f"control_plane_bench: {exc}") from None
    if args.output == "markdown":
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
