"""Node IDs as Cilium's agent keeps them: local to this node, one per peer, 1..65535 (lowest free first:
our choice, Cilium's idpool leases any free one).

They are not cluster-wide (each agent numbers its own peers), and they outlive the agent in the kernel's
XFRM marks: a restarted agent restores them from the states it finds, so the marks of live SAs never move.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address

from ciphermesh.datapath.kernel.ipsec.marks import MAX_NODE_ID, MIN_NODE_ID


class NodeIDsExhaustedError(RuntimeError):
    """Every node ID is taken: Cilium's limit of 65535 peers."""


class NodeIDs:
    """Peer tunnel IP -> node ID, stable while the peer stays."""

    def __init__(self, restored: Mapping[IPv4Address, int] | None = None) -> None:
        self._ids: dict[IPv4Address, int] = {}
        self._taken: set[int] = set()
        self._next = MIN_NODE_ID
        for peer, node_id in (restored or {}).items():
            self._restore(peer, node_id)

    def _restore(self, peer: IPv4Address, node_id: int) -> None:
        if not MIN_NODE_ID <= node_id <= MAX_NODE_ID:
            raise ValueError(f"node ID {node_id} of {peer} is not in {MIN_NODE_ID}..{MAX_NODE_ID}")
        if node_id in self._taken and self._ids.get(peer) != node_id:
            raise ValueError(f"node ID {node_id} of {peer} is already another peer's")
        self._ids[peer] = node_id
        self._taken.add(node_id)

    def get(self, peer: IPv4Address) -> int | None:
        return self._ids.get(peer)

    def assign(self, peer: IPv4Address) -> int:
        """The peer's node ID, allocating the lowest free one on first sight."""
        if (known := self._ids.get(peer)) is not None:
            return known
        if len(self._taken) >= MAX_NODE_ID - MIN_NODE_ID + 1:
            raise NodeIDsExhaustedError(f"no node ID left for {peer}: {MAX_NODE_ID} peers hold them all")
        while self._next in self._taken:
            self._next += 1
        node_id = self._next
        self._ids[peer] = node_id
        self._taken.add(node_id)
        return node_id

    def keep_only(self, peers: Iterable[IPv4Address]) -> None:
        """Release the IDs of peers that left; their numbers become free again, lowest first."""
        wanted = set(peers)
        for peer in [p for p in self._ids if p not in wanted]:
            self._taken.discard(self._ids.pop(peer))
        self._next = min(set(range(MIN_NODE_ID, MIN_NODE_ID + len(self._taken) + 1)) - self._taken)

    def as_dict(self) -> dict[IPv4Address, int]:
        return dict(self._ids)
