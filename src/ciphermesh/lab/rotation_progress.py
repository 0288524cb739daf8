"""How far a key rotation has got in a lab: who published the new key ID, who sends with it, who is done."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ciphermesh.lab.cluster import agent_status, connect
from ciphermesh.lab.info import LabInfo

MAX_QUERY_THREADS = 16


@dataclass(frozen=True)
class RotationProgress:
    """One look at every node against `key_id`: whose store record carries it, whose engine sends to every
    peer with it, and who holds it alone (the old keys' grace period over, not rotating)."""

    key_id: int
    nodes: tuple[str, ...]
    published: frozenset[str]
    sending: frozenset[str]
    settled: frozenset[str]
    keys_in_use: Mapping[str, int] = field(default_factory=dict)

    @property
    def all_published(self) -> bool:
        return self.published.issuperset(self.nodes)

    @property
    def all_sending(self) -> bool:
        return self.sending.issuperset(self.nodes)

    @property
    def all_settled(self) -> bool:
        return self.all_published and self.all_sending and self.settled.issuperset(self.nodes)

    def describe(self) -> str:
        """Which nodes lag at which stage, in one line."""
        lagging = {
            "not published": sorted(set(self.nodes) - self.published),
            "not sending": sorted(set(self.nodes) - self.sending),
            "not settled": sorted(set(self.nodes) - self.settled),
        }
        parts = [f"{stage}: {', '.join(names)}" for stage, names in lagging.items() if names]
        return f"key ID {self.key_id}: " + ("; ".join(parts) if parts else "every node settled")


def _sends_with(status: dict[str, Any], key_id: int, peers: int) -> bool:
    engine = status.get("encryption", {}).get("engineStatus") or {}
    paths = engine.get("peers", [])
    return len(paths) == peers and all(path.get("outSPI") == key_id for path in paths)


def _holds_only(status: dict[str, Any], key_id: int, peers: int) -> bool:
    encryption = status.get("encryption", {})
    paths = (encryption.get("engineStatus") or {}).get("peers", [])
    return (
        encryption.get("keyID") == key_id
        and not encryption.get("rotationInProgress")
        and len(paths) == peers
        and all(path.get("inSPIs") == [key_id] for path in paths)
    )


def rotation_progress(info: LabInfo, key_id: int) -> RotationProgress:
    """Ask the store and every agent (in parallel: a slow agent must not blur the others' timing)."""
    with connect(info) as store:
        records = {v.value.name: v.value for v in store.list_nodes()}
    with ThreadPoolExecutor(max_workers=min(MAX_QUERY_THREADS, len(info.nodes))) as pool:
        statuses = dict(zip(info.nodes, pool.map(lambda node: agent_status(info, node), info.nodes),
                            strict=True))
    peers = len(info.nodes) - 1
    live = {node: status for node, status in statuses.items() if status is not None}
    return RotationProgress(
        key_id=key_id,
        nodes=info.nodes,
        published=frozenset(n for n, record in records.items() if record.key_id == key_id),
        sending=frozenset(n for n, s in live.items() if _sends_with(s, key_id, peers)),
        settled=frozenset(n for n, s in live.items() if _holds_only(s, key_id, peers)),
        keys_in_use={
            n: int((s.get("encryption", {}).get("engineStatus") or {}).get("keysInUse", 0))
            for n, s in live.items()
        },
    )


@dataclass(frozen=True)
class RotationTimeline:
    """Seconds from `start` until every node had published, sent with, and settled on the new key."""

    key_id: int
    published: float | None
    sending: float | None
    settled: float | None
    max_keys_in_use: int
    last: RotationProgress


def follow_rotation(
    info: LabInfo,
    key_id: int,
    *,
    start: float,
    timeout: float,
    poll: float = 0.05,
    until: Callable[[RotationProgress], bool] = lambda progress: progress.all_settled,
    clock: Callable[[], float] = time.monotonic,
) -> RotationTimeline:
    """Poll until `until` holds or `timeout` seconds after `start` pass; the timeline either way."""
    published = sending = settled = None
    max_keys = 0
    while True:
        progress = rotation_progress(info, key_id)
        now = clock() - start
        max_keys = max([max_keys, *progress.keys_in_use.values()])
        if published is None and progress.all_published:
            published = now
        if sending is None and progress.all_sending:
            sending = now
        if settled is None and progress.all_settled:
            settled = now
        if until(progress) or now > timeout:
            return RotationTimeline(key_id, published, sending, settled, max_keys, progress)
        time.sleep(poll)
