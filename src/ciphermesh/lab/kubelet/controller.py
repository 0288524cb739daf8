"""The DaemonSet and Deployment controllers' decisions, as a pure plan: which pods to stop and which to
create. A slot gets a new pod only once its old one is gone (no two agents on a node at once); a
changed template replaces one pod at a time, and only while every other pod is available
(RollingUpdate with maxUnavailable 1, maxSurge 0)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ciphermesh.lab.kubelet.workloads import Slot, Workload, desired_slots


@dataclass(frozen=True)
class PodView:
    """What the plan needs of a running pod."""

    key: int
    workload_uid: str
    slot: str
    node: str
    template_hash: str
    available: bool
    terminating: bool


@dataclass
class Plan:
    stop: list[int] = field(default_factory=list)
    create: list[tuple[Workload, Slot]] = field(default_factory=list)


def plan(workloads: dict[str, Workload], nodes: list[str], pods: list[PodView]) -> Plan:
    """What to do so the pods match the workloads on the active `nodes`."""
    result = Plan()
    live = [p for p in pods if not p.terminating]
    for pod in live:
        if pod.workload_uid not in workloads:
            result.stop.append(pod.key)
    for workload in workloads.values():
        wanted = {s.key: s for s in desired_slots(workload, nodes)}
        mine = [p for p in pods if p.workload_uid == workload.uid]
        for pod in mine:
            slot = wanted.get(pod.slot)
            if not pod.terminating and (slot is None or slot.node != pod.node):
                result.stop.append(pod.key)
        staying = [p for p in mine if p.key not in result.stop]
        unavailable = sum(1 for p in staying if p.terminating or not p.available)
        for key, slot in wanted.items():
            if not any(p.slot == key for p in staying):
                result.create.append((workload, slot))
                unavailable += 1
        outdated = sorted(
            (p for p in staying if not p.terminating and p.template_hash != workload.template_hash),
            key=lambda p: (p.node, p.slot),
        )
        if outdated and unavailable == 0:
            result.stop.append(outdated[0].key)
    return result
