"""The userspace WireGuard engine as a node runs it: cilium_wg0 behind the face, fed plain desired peers."""

from __future__ import annotations

from typing import Any

from ciphermesh.datapath.desired import DesiredDatapath
from ciphermesh.datapath.engine import EngineKind
from ciphermesh.datapath.userspace.wireguard.node import WireGuardNode
from ciphermesh.wireguard.keys import PrivateKey
from ciphermesh.wireguard.peer import PeerConfig


class UserspaceWireGuard:
    """cilium_wg0 with its UDP port, started at once; `close` removes the link."""

    def __init__(self, private_key: PrivateKey, *, port: int, mtu: int) -> None:
        self._node = WireGuardNode(private_key, port=port, mtu=mtu)
        self._node.start()

    @property
    def kind(self) -> EngineKind:
        return "userspace"

    @property
    def device(self) -> str:
        return self._node.ifname

    def apply(self, desired: DesiredDatapath) -> None:
        self._node.sync_peers([
            PeerConfig(public_key=p.public_key, endpoint=p.endpoint, allowed_ips=p.allowed_ips)
            for p in desired.wireguard_peers
        ])

    def status(self, *, reveal: bool = False) -> dict[str, Any] | None:
        status = self._node.status()
        if status is None:
            return None
        peers = status["peers"]
        counters = {"txBytes": sum(p["txBytes"] for p in peers), "rxBytes": sum(p["rxBytes"] for p in peers)}
        # WireGuard holds sessions, not ESP SAs: there is nothing for `encryption sa list`.
        return {"engine": self.kind, **status, "counters": counters, "sas": []}

    def close(self) -> None:
        self._node.stop()
