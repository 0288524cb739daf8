"""What the kubelet remembers of a pod it runs, in `<lab>/kubelet/pods/<uid>/`: `state.json` (the Pod
as created, its workload and slot) and a pid file per container, so a restarted kubelet adopts it."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ciphermesh.lab.state import write_private

JSONObject = dict[str, Any]


@dataclass
class PodRecord:
    """A pod of a workload on a node; `pod` is the object the API server returned on create."""

    pod: JSONObject
    workload_uid: str
    slot: str
    template_hash: str
    restarts: dict[str, int] = field(default_factory=dict)

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def node(self) -> str:
        return str(self.pod["spec"]["nodeName"])

    def as_json(self) -> JSONObject:
        return {"pod": self.pod, "workloadUID": self.workload_uid, "slot": self.slot,
                "templateHash": self.template_hash, "restarts": self.restarts}


class PodStore:
    """The per-pod directories under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def dir(self, uid: str) -> Path:
        return self.root / uid

    def pidfile(self, uid: str, container: str) -> Path:
        return self.dir(uid) / "containers" / f"{container}.pid"

    def save(self, record: PodRecord) -> None:
        write_private(self.dir(record.uid) / "state.json", json.dumps(record.as_json()) + "\n")

    def load_all(self) -> list[PodRecord]:
        """Every pod remembered (unreadable records are skipped; their directories stay for a look)."""
        records = []
        for state in sorted(self.root.glob("*/state.json")):
            try:
                raw = json.loads(state.read_text())
                records.append(PodRecord(raw["pod"], raw["workloadUID"], raw["slot"], raw["templateHash"],
                                         dict(raw.get("restarts") or {})))
            except (OSError, ValueError, KeyError):
                continue
        return records

    def remove(self, uid: str) -> None:
        shutil.rmtree(self.dir(uid), ignore_errors=True)
