"""Key rotation convergence: from `encryption key rotate` until every node has published the new key ID,
every engine sends to every peer with the new SPI, and every node has dropped the old key.

Builds one IPsec lab per node count (always torn down), rotates `--rotations` times in each, prints one
JSON object per rotation and a summary per node count.
Run as root: `.venv/bin/python benchmarks/rotation_bench.py --nodes 3,20 [--rotations 5] [--grace 3]`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import time
from typing import Any

from ciphermesh.bench.lab_measure import BenchError
from ciphermesh.bench.rotation import look_seconds, measure_rotation
from ciphermesh.config import load_values
from ciphermesh.keys import next_key_id, parse_secret
from ciphermesh.lab.cluster import connect, lab_up
from ciphermesh.lab.down import lab_down
from ciphermesh.lab.info import LabInfo

MEASURES = ("secretWrittenSeconds", "commandSeconds", "firstPublishedSeconds", "publishedSeconds",
            "sendingSeconds", "sendingAfterWriteSeconds", "settledSeconds", "agentsCpuSeconds")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _rotate(info: LabInfo, poll: float, grace: float) -> dict[str, Any]:
    """One `key rotate`, followed while it runs: the new key's ID is known before, the next one."""
    secret = info.values().text("encryption.ipsec.secretName")
    with connect(info) as store:
        stored = store.get_key_secret(name=secret)
    assert stored is not None
    key_id = next_key_id(parse_secret(stored.value.keys).key_id)
    argv = [sys.executable, "-m", "ciphermesh", "encryption", "key", "rotate", "--lab", info.name]
    try:
        run, out = measure_rotation(info, secret, key_id, argv, poll=poll, grace=grace)
    except BenchError as exc:
        raise SystemExit(str(exc)) from None
    if not out.strip().endswith(f": {key_id}"):
        raise SystemExit(f"key rotate did not move to key {key_id}: {out.strip()}")
    return run


def bench(nodes: int, rotations: int, grace: float, poll: float) -> dict[str, Any]:
    name = "rb" + secrets.token_hex(2)
    values = load_values(sets=["encryption.enabled=true", "encryption.type=ipsec",
                               f"encryption.ipsec.keyRotationDuration={grace:g}s"])
    runs = []
    load_before = _load()
    try:
        began = time.monotonic()
        info = lab_up(name, nodes, values, lambda _m: None)
        up_seconds = time.monotonic() - began
        for _ in range(rotations):
            run = _rotate(info, poll, grace)
            print(json.dumps({"nodes": nodes, **run}), flush=True)
            runs.append(run)
        look = look_seconds(info, runs[-1]["keyID"])
    finally:
        lab_down(name, lambda _m: None)

    def median(key: str) -> float:
        return round(float(statistics.median(run[key] for run in runs)), 3)

    return {
        "nodes": nodes,
        "labUpSeconds": round(up_seconds, 1),
        "rotations": rotations,
        "graceSeconds": grace,
        "pollSeconds": poll,
        "lookSeconds": look,
        "median": {key: median(key) for key in MEASURES},
        "max": {key: max(run[key] for run in runs) for key in ("sendingSeconds", "sendingAfterWriteSeconds")},
        "loadBefore": load_before,
        "loadAfter": _load(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="3,20", help="comma-separated node counts (default 3,20)")
    parser.add_argument("--rotations", type=int, default=5)
    parser.add_argument("--grace", type=float, default=3.0, help="keyRotationDuration in seconds (default 3)")
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between looks at every node")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the lab builds network namespaces")
    for count in (int(n) for n in args.nodes.split(",")):
        print(json.dumps({"summary": bench(count, args.rotations, args.grace, args.poll)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
