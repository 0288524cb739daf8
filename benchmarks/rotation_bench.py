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
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ciphermesh.config import load_values
from ciphermesh.keys import next_key_id, parse_secret
from ciphermesh.lab.cluster import LabInfo, agent_pid, connect, lab_up
from ciphermesh.lab.down import lab_down
from ciphermesh.lab.rotation_progress import follow_rotation, rotation_progress
from ciphermesh.store.base import StoreEvent
from ciphermesh.store.model import KeySecret, Node
from ciphermesh.store.stream import EventStream

SETTLE_TIMEOUT = 120.0
MEASURES = ("secretWrittenSeconds", "commandSeconds", "firstPublishedSeconds", "publishedSeconds",
            "sendingSeconds", "sendingAfterWriteSeconds", "settledSeconds", "agentsCpuSeconds")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class _Moments:
    """When the command exited, the store first held the new key and each node published it (seconds
    from `start`, from store watches: exact, where polling the agents is only as fine as its period)."""

    def __init__(self, start: float, nodes: tuple[str, ...]) -> None:
        self.start = start
        self.nodes = nodes
        self.returned: float | None = None
        self.written: float | None = None
        self.published: dict[str, float] = {}

    def wait_command(self, process: subprocess.Popen[str]) -> None:
        process.wait()
        self.returned = time.monotonic() - self.start

    def watch_secret(self, events: EventStream[StoreEvent[KeySecret]], key_id: int) -> None:
        while (event := events.get(timeout=SETTLE_TIMEOUT)) is not None:
            if event.kind == "put" and event.value is not None and event.value.keys.startswith(f"{key_id}+"):
                self.written = time.monotonic() - self.start
                return

    def watch_nodes(self, events: EventStream[StoreEvent[Node]], key_id: int) -> None:
        while len(self.published) < len(self.nodes) and (event := events.get(timeout=SETTLE_TIMEOUT)):
            node = event.value
            if event.kind == "put" and node is not None and node.key_id == key_id:
                self.published.setdefault(node.name, time.monotonic() - self.start)


def _agents_cpu_seconds(info: LabInfo) -> float:
    """User plus system CPU time the lab's agents have used so far (/proc/<pid>/stat)."""
    ticks = 0
    for node in info.nodes:
        pid = agent_pid(info, node)
        if pid is not None:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _rotate(info: LabInfo, poll: float, grace: float) -> dict[str, Any]:
    """One `key rotate`, followed while it runs: the new key's ID is known before, the next one."""
    secret = info.values().text("encryption.ipsec.secretName")
    cpu_before = _agents_cpu_seconds(info)
    with connect(info) as store:
        stored = store.get_key_secret(name=secret)
        assert stored is not None
        key_id = next_key_id(parse_secret(stored.value.keys).key_id)
        with store.watch_key_secret(name=secret) as events, store.watch_nodes() as node_events:
            for stream in (events, node_events):
                while (event := stream.get(timeout=10)) is not None and event.kind != "synced":
                    pass
            start = time.monotonic()
            moments = _Moments(start, info.nodes)
            process = subprocess.Popen(
                [sys.executable, "-m", "ciphermesh", "encryption", "key", "rotate", "--lab", info.name],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            threads = [threading.Thread(target=moments.wait_command, args=(process,)),
                       threading.Thread(target=moments.watch_secret, args=(events, key_id)),
                       threading.Thread(target=moments.watch_nodes, args=(node_events, key_id))]
            for thread in threads:
                thread.start()
            timeline = follow_rotation(info, key_id, start=start, timeout=SETTLE_TIMEOUT + grace, poll=poll)
            for thread in threads:
                thread.join(timeout=SETTLE_TIMEOUT)
    cpu = _agents_cpu_seconds(info) - cpu_before
    out, err = process.communicate()
    if process.returncode != 0 or not out.strip().endswith(f": {key_id}"):
        raise SystemExit(f"key rotate did not move to key {key_id}: {(err or out).strip()}")
    if (timeline.settled is None or moments.written is None or moments.returned is None
            or len(moments.published) < len(info.nodes)):
        raise SystemExit(f"rotation to key {key_id} did not settle: {timeline.last.describe()}")
    assert timeline.published is not None and timeline.sending is not None
    return {
        "keyID": key_id,
        "secretWrittenSeconds": round(moments.written, 3),
        "commandSeconds": round(moments.returned, 3),
        "firstPublishedSeconds": round(min(moments.published.values()), 3),
        "publishedSeconds": round(max(moments.published.values()), 3),
        "sendingSeconds": round(timeline.sending, 3),
        "sendingAfterWriteSeconds": round(timeline.sending - moments.written, 3),
        "settledSeconds": round(timeline.settled, 3),
        "maxKeysInUse": timeline.max_keys_in_use,
        "agentsCpuSeconds": round(cpu, 2),
    }


def _look_seconds(info: LabInfo, key_id: int, looks: int = 9) -> float:
    """What one look at every node costs: with the poll period, the resolution of `sendingSeconds`."""
    samples = []
    for _ in range(looks):
        began = time.monotonic()
        rotation_progress(info, key_id)
        samples.append(time.monotonic() - began)
    return round(statistics.median(samples), 3)


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
        look = _look_seconds(info, runs[-1]["keyID"])
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
