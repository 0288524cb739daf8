"""The kernel WireGuard engine's peer plan: from what the kernel holds to exactly the desired peers."""

from __future__ import annotations

import secrets
from ipaddress import IPv4Network
from typing import Any

from ciphermesh.datapath.desired import WireGuardPeer
from ciphermesh.datapath.kernel.wireguard.peers import DUMMY_PEER, KernelPeer, plan_peers
from ciphermesh.wireguard.keys import PrivateKey, PublicKey

A, B, C = (PrivateKey.generate(secrets.token_bytes).public_key() for _ in range(3))


def _want(key: PublicKey, endpoint: str, *allowed: str) -> WireGuardPeer:
    return WireGuardPeer(name=endpoint, public_key=key, endpoint=(endpoint, 51871),
                         allowed_ips=tuple(IPv4Network(a) for a in allowed))


def _held(key: PublicKey, endpoint: str, *allowed: str, rx: int = 0) -> KernelPeer:
    return KernelPeer(key.to_base64(), (endpoint, 51871), frozenset(allowed), rx_bytes=rx)


def _apply(held: list[KernelPeer], requests: list[dict[str, Any]]) -> dict[str, tuple[Any, frozenset[str]]]:
    """What the kernel holds after `requests`, by WireGuard's rules: an allowed IP belongs to one peer."""
    peers = {p.public_key: (p.endpoint, set(p.allowed_ips)) for p in held}
    for request in requests:
        key = request["public_key"]
        if request.get("remove"):
            del peers[key]
            continue
        endpoint, allowed = peers.setdefault(key, (None, set()))
        if "endpoint_addr" in request:
            endpoint = (request["endpoint_addr"], request["endpoint_port"])
        for ip in request.get("allowed_ips", ()):
            for _, other in peers.values():
                other.discard(ip)
            allowed.add(ip)
        peers[key] = (endpoint, allowed)
    return {key: (endpoint, frozenset(allowed)) for key, (endpoint, allowed) in peers.items()}


def test_matching_peers_are_left_alone() -> None:
    held = [_held(A, "10.0.0.2", "10.1.2.0/24", "10.0.0.2/32", rx=5)]
    assert plan_peers(held, [_want(A, "10.0.0.2", "10.0.0.2/32", "10.1.2.0/24")]) == []


def test_new_and_gone_peers() -> None:
    held = [_held(A, "10.0.0.2", "10.1.2.0/24")]
    requests = plan_peers(held, [_want(B, "10.0.0.3", "10.1.3.0/24")])
    assert requests == [
        {"public_key": A.to_base64(), "remove": True},
        {"public_key": B.to_base64(), "endpoint_addr": "10.0.0.3", "endpoint_port": 51871,
         "allowed_ips": ["10.1.3.0/24"]},
    ]


def test_an_endpoint_change_sets_only_the_endpoint() -> None:
    held = [_held(A, "10.0.0.2", "10.1.2.0/24")]
    assert plan_peers(held, [_want(A, "10.0.0.9", "10.1.2.0/24")]) == [
        {"public_key": A.to_base64(), "endpoint_addr": "10.0.0.9", "endpoint_port": 51871}]


def test_removed_allowed_ips_leave_through_the_dummy_peer_which_then_goes() -> None:
    held = [_held(A, "10.0.0.2", "10.1.2.0/24", "10.0.0.2/32")]
    requests = plan_peers(held, [_want(A, "10.0.0.2", "10.1.4.0/24", "10.0.0.2/32")])
    assert requests == [
        {"public_key": A.to_base64(), "allowed_ips": ["10.1.4.0/24"]},
        {"public_key": DUMMY_PEER, "allowed_ips": ["10.1.2.0/24"]},
        {"public_key": DUMMY_PEER, "remove": True},
    ]
    assert _apply(held, requests) == {A.to_base64(): (("10.0.0.2", 51871),
                                                     frozenset({"10.1.4.0/24", "10.0.0.2/32"}))}


def test_an_allowed_ip_moving_to_another_peer_stays_with_it() -> None:
    held = [_held(A, "10.0.0.2", "10.1.2.0/24", "10.0.0.2/32"), _held(B, "10.0.0.3", "10.0.0.3/32")]
    desired = [_want(A, "10.0.0.2", "10.0.0.2/32"), _want(B, "10.0.0.3", "10.0.0.3/32", "10.1.2.0/24"),
               _want(C, "10.0.0.4", "10.0.0.4/32")]
    after = _apply(held, plan_peers(held, desired))
    assert after == {p.public_key.to_base64(): (p.endpoint, frozenset(str(n) for n in p.allowed_ips))
                     for p in desired}


def test_a_dummy_peer_left_by_an_interrupted_run_goes() -> None:
    held = [KernelPeer(DUMMY_PEER, None, frozenset({"10.1.9.0/24"})), _held(A, "10.0.0.2", "10.0.0.2/32")]
    requests = plan_peers(held, [_want(A, "10.0.0.2", "10.0.0.2/32")])
    assert requests == [{"public_key": DUMMY_PEER, "remove": True}]
