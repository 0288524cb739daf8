"""One key rotation measured in a lab: from a command that writes the key Secret until the store held the
new line, every node published its key ID, every engine sends to every peer with it, and every node holds
it alone. Shared by benchmarks/rotation_bench.py and benchmarks/control_plane_bench.py."""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ciphermesh.bench.lab_measure import BenchError
from ciphermesh.bench.lab_usage import agent_pids, usage
from ciphermesh.lab.cluster import connect
from ciphermesh.lab.info import LabInfo
from ciphermesh.lab.rotation_progress import follow_rotation, rotation_progress
from ciphermesh.store.base import StoreEvent
from ciphermesh.store.model import KeySecret, Node
from ciphermesh.store.stream import EventStream

SETTLE_TIMEOUT = 120.0
SYNC_TIMEOUT = 30.0


class _Moments:
    """When the command exited, the store first held the new key and each node published it (seconds
    from `start`, from store watches: exact, where polling the agents is only as fine as its period)."""

    def __init__(self, start: float, nodes: tuple[str, ...]) -> None:
        self.start = start
        self.nodes = nodes
        self.returned: float | None = None
        self.written: float | None = None
        self.published: dict[str, float] = {}
        self.output = ("", "")

    def wait_command(self, process: subprocess.Popen[str], stdin: str | None) -> None:
        self.output = process.communicate(stdin)
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


def _synced(stream: EventStream[Any]) -> None:
    """Drain the initial listing, so what follows is the rotation's own events."""
    while (event := stream.get(timeout=SYNC_TIMEOUT)) is not None and event.kind != "synced":
        pass


def agents_cpu_seconds(info: LabInfo) -> float:
    """CPU time the lab's agents (with their children) have used so far."""
    return usage(list(agent_pids(info).values())).cpu_seconds


def measure_rotation(
    info: LabInfo,
    secret_name: str,
    key_id: int,
    argv: Sequence[str],
    *,
    poll: float,
    grace: float,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], str]:
    """Run `argv` (it must move the Secret to `key_id`) and follow the rotation; the timings and its stdout.

    Seconds count from the command's start; `*AfterWriteSeconds` from the moment the store held the line.
    """
    cpu_before = agents_cpu_seconds(info)
    with connect(info) as store, store.watch_key_secret(name=secret_name) as events, \
            store.watch_nodes() as node_events:
        _synced(events)
        _synced(node_events)
        start = time.monotonic()
        moments = _Moments(start, info.nodes)
        piped = subprocess.PIPE if stdin is not None else subprocess.DEVNULL
        process = subprocess.Popen(list(argv), stdin=piped, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=dict(env) if env is not None else None)
        threads = [threading.Thread(target=moments.wait_command, args=(process, stdin)),
                   threading.Thread(target=moments.watch_secret, args=(events, key_id)),
                   threading.Thread(target=moments.watch_nodes, args=(node_events, key_id))]
        for thread in threads:
            thread.start()
        timeline = follow_rotation(info, key_id, start=start, timeout=SETTLE_TIMEOUT + grace, poll=poll)
        for thread in threads:
            thread.join(timeout=SETTLE_TIMEOUT)
    cpu = agents_cpu_seconds(info) - cpu_before
    out, err = moments.output
    if process.returncode != 0:
        # The command's own words (kubectl and ciphermesh never print key material in errors).
        raise BenchError(f"{argv[0]} exited with {process.returncode}: {err.strip()}")
    if (timeline.settled is None or moments.written is None or moments.returned is None
            or len(moments.published) < len(info.nodes)):
        raise BenchError(f"rotation to key {key_id} did not settle: {timeline.last.describe()}")
    assert timeline.sending is not None
    # A node publishes only after the store held the line: a secret-watch moment later than the first
    # publication is this process's watch thread scheduled late, not the store.
    written = min(moments.written, *moments.published.values())
    run = {
        "keyID": key_id,
        "secretWrittenSeconds": round(written, 3),
        "commandSeconds": round(moments.returned, 3),
        "firstPublishedSeconds": round(min(moments.published.values()), 3),
        "publishedSeconds": round(max(moments.published.values()), 3),
        "publishedAfterWriteSeconds": round(max(moments.published.values()) - written, 3),
        "sendingSeconds": round(timeline.sending, 3),
        "sendingAfterWriteSeconds": round(timeline.sending - written, 3),
        "settledSeconds": round(timeline.settled, 3),
        "maxKeysInUse": timeline.max_keys_in_use,
        "agentsCpuSeconds": round(cpu, 2),
    }
    return run, out


def look_seconds(info: LabInfo, key_id: int, looks: int = 9) -> float:
    """What one look at every node costs: with the poll period, the resolution of `sendingSeconds`."""
    samples = []
    for _ in range(looks):
        began = time.monotonic()
        rotation_progress(info, key_id)
        samples.append(time.monotonic() - began)
    return round(statistics.median(samples), 3)
