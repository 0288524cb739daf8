"""The kernel's WireGuard peers as plain data, and the requests that make them a desired set.

WireGuard netlink cannot remove one allowed IP from a peer, only replace the whole list, which leaves the
peer briefly without any. As Cilium's agent, removed allowed IPs are moved onto a dummy peer (the all-zero
public key) which is then deleted: every other allowed IP keeps routing throughout.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import ip_network
from typing import Any

from ciphermesh.datapath.desired import WireGuardPeer
from ciphermesh.wireguard.keys import encode_key

DUMMY_PEER = encode_key(bytes(32))


@dataclass(frozen=True)
class KernelPeer:
    """One peer as the kernel reports it (`wg show`'s fields; no preshared key, only whether there is one)."""

    public_key: str
    endpoint: tuple[str, int] | None
    allowed_ips: frozenset[str]
    latest_handshake: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    persistent_keepalive: int = 0
    preshared_key: bool = False


def prefix(text: str) -> str:
    """An allowed IP in one spelling, whichever side wrote it."""
    return str(ip_network(text, strict=False))


def _endpoint_request(endpoint: tuple[str, int]) -> dict[str, Any]:
    return {"endpoint_addr": endpoint[0], "endpoint_port": endpoint[1]}


def plan_peers(current: Iterable[KernelPeer], desired: Iterable[WireGuardPeer]) -> list[dict[str, Any]]:
    """pyroute2 `WireGuard.set(peer=...)` requests, in order, from `current` to exactly `desired`.

    Peers that match are left alone (their sessions and counters carry on); gone peers go first, so their
    allowed IPs are free for the peers that take them; removed allowed IPs leave through the dummy peer.
    """
    held = {peer.public_key: peer for peer in current}
    wanted = {peer.public_key.to_base64(): peer for peer in desired}
    requests: list[dict[str, Any]] = [
        {"public_key": key, "remove": True} for key in sorted(held) if key not in wanted
    ]
    taken = {prefix(str(net)) for peer in wanted.values() for net in peer.allowed_ips}
    dropped: set[str] = set()
    for key, peer in wanted.items():
        allowed = {prefix(str(net)) for net in peer.allowed_ips}
        old = held.get(key)
        if old is None:
            requests.append({"public_key": key, **_endpoint_request(peer.endpoint),
                             "allowed_ips": sorted(allowed)})
            continue
        change: dict[str, Any] = {}
        if old.endpoint != peer.endpoint:
            change.update(_endpoint_request(peer.endpoint))
        if added := allowed - old.allowed_ips:
            change["allowed_ips"] = sorted(added)
        if change:
            requests.append({"public_key": key, **change})
        # An allowed IP that another desired peer takes has moved there with that peer's request.
        dropped |= old.allowed_ips - allowed - taken
    if dropped:
        requests += [{"public_key": DUMMY_PEER, "allowed_ips": sorted(dropped)},
                     {"public_key": DUMMY_PEER, "remove": True}]
    return requests
