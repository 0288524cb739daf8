"""A scenario on a two-node ciphermesh lab: a client pod on node-1, a server pod on node-2 (or the nodes)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ciphermesh.bench.lab_scenario import Endpoints, Progress
from ciphermesh.config.values import load_values
from ciphermesh.lab import netns
from ciphermesh.lab.cluster import lab_up
from ciphermesh.lab.down import lab_down
from ciphermesh.lab.info import LabError, LabInfo
from ciphermesh.lab.pod_registry import run_pod
from ciphermesh.lab.processes import pids_in_netns
from ciphermesh.lab.state import LabPaths

LAB_PREFIX = "bn"
MEASURING_TOOLS = frozenset({"iperf3", "ping"})
_NAME_ATTEMPTS = 8


def free_lab_name() -> str:
    """`bn` and 4 random hex digits, not used by any lab on this machine."""
    for _ in range(_NAME_ATTEMPTS):
        name = f"{LAB_PREFIX}{secrets.token_hex(2)}"
        if not LabPaths.of(name).root.exists() and not netns.lab_residue(name):
            return name
    raise LabError(f"no free lab name with prefix {LAB_PREFIX!r} after {_NAME_ATTEMPTS} tries")


@dataclass(frozen=True)
class LabScenario:
    """Pod to pod across two lab nodes (`host`: node to node), the lab configured by `--set` expressions."""

    name: str
    label: str
    sets: tuple[str, ...]
    host: bool = False
    tools: tuple[str, ...] = ("iperf3", "ping", "nsenter", "ip")

    @contextmanager
    def build(self, progress: Progress) -> Iterator[Endpoints]:
        values = load_values(sets=self.sets)
        lab = free_lab_name()
        progress(f"{self.name}: lab {lab} up ({', '.join(self.sets) or 'defaults'})")
        try:
            info = lab_up(lab, 2, values, lambda message: progress(f"{self.name}: {message}"))
            if self.host:
                client_node, server_node = info.nodes
                yield Endpoints(info.netns_of(client_node), info.netns_of(server_node),
                                info.node_ips[server_node], lambda: _node_pids(info))
                return
            client = run_pod(info, "client", info.nodes[0])
            server = run_pod(info, "server", info.nodes[1])
            yield Endpoints(client.netns, server.netns, server.ip, lambda: _node_pids(info))
        finally:
            progress(f"{self.name}: lab {lab} down")
            lab_down(lab, lambda message: None)


def _node_pids(info: LabInfo) -> list[int]:
    # The node namespaces hold the agents (whose threads include the userspace engine), and in the host
    # scenarios the measuring tools, which are not the tunnel's work.
    return [pid for node in info.nodes for pid in pids_in_netns(info.netns_of(node))
            if _command(pid) not in MEASURING_TOOLS]


def _command(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
