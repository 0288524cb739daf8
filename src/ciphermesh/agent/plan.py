"""The agent's heart, a pure function: the node, its peers and the keys in; the desired datapath out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network

from ciphermesh.datapath.desired import (
    WIREGUARD_PORT,
    DesiredDatapath,
    IPsecEngineState,
    IPsecPeer,
    Mode,
    RemoteNode,
    VxlanPeer,
    WireGuardPeer,
)
from ciphermesh.keys import KeyLine, derive_tunnel_key
from ciphermesh.keys.rotation import older_key_id
from ciphermesh.store.model import Node
from ciphermesh.wireguard.keys import InvalidKeyError, PublicKey


def outbound_spi(local_key_id: int, peer_key_id: int | None, keys: Mapping[int, KeyLine]) -> int | None:
    """The SPI to send to a peer with: the older of both current keys, once the peer has published one."""
    if peer_key_id is None:
        return None
    spi = older_key_id(local_key_id, peer_key_id)
    return spi if spi in keys else None


def _ready_peer(local: Node, peer: Node) -> tuple[IPv4Address, IPv4Address, tuple[IPv4Network, ...]] | None:
    if peer.name == local.name or peer.router_ip is None or not peer.pod_cidrs:
        return None
    node_ip, router_ip = ip_address(peer.node_ip), ip_address(peer.router_ip)
    cidrs = tuple(c for c in (ip_network(text) for text in peer.pod_cidrs) if isinstance(c, IPv4Network))
    if not isinstance(node_ip, IPv4Address) or not isinstance(router_ip, IPv4Address) or not cidrs:
        return None
    return node_ip, router_ip, cidrs


def plan(
    local: Node,
    peers: Iterable[Node],
    *,
    mode: Mode,
    keys: Mapping[int, KeyLine],
    current_key_id: int | None,
    node_encryption: bool = False,
) -> DesiredDatapath:
    """The datapath for `local`: VXLAN peers and routes for every ready peer, SAs or WireGuard peers.

    A peer that publishes another encryption mode, or in WireGuard mode no public key, is `blocked`.
    `keys` holds every key this node accepts (the current one and those still in their grace period),
    by key ID; `current_key_id` is the one it sends with when the peer has it too. With `node_encryption`,
    host traffic to a peer's node IP is encrypted too, unless the peer published that it opted out.
    """
    if local.router_ip is None:
        raise ValueError(f"node {local.name} has no router IP yet")
    local_router = ip_address(local.router_ip)
    if not isinstance(local_router, IPv4Address):
        raise ValueError(f"node {local.name}: router IP {local.router_ip} is not IPv4")
    vxlan_peers: list[VxlanPeer] = []
    remotes: list[RemoteNode] = []
    engine_peers: list[IPsecPeer] = []
    wireguard_peers: list[WireGuardPeer] = []
    blocked: list[IPv4Network] = []
    node_peers: list[IPv4Address] = []
    blocked_nodes: list[IPv4Address] = []
    waiting: list[str] = []
    # Public keys already in use: ours, then each accepted peer's (Cilium refuses a duplicate too).
    taken = {PublicKey.from_base64(local.wg_pub_key).raw} if local.wg_pub_key is not None else set()
    for peer in sorted(peers, key=lambda node: node.name):
        ready = _ready_peer(local, peer)
        if ready is None:
            if peer.name != local.name:
                waiting.append(f"{peer.name}: no router IP or pod CIDR yet")
            continue
        node_ip, router_ip, cidrs = ready
        vxlan_peers.append(VxlanPeer(node_ip, router_ip))
        # A peer that has not said yet is held to it: its host traffic waits rather than leave in clear.
        opted_out = peer.encryption.get("nodeEncryption") is False
        host_too = mode != "disabled" and node_encryption and not opted_out
        peer_mode = peer.encryption.get("mode")
        usable = True
        if peer_mode is not None and peer_mode != mode:
            waiting.append(f"{peer.name}: runs encryption mode {peer_mode}, this node {mode}; "
                           "traffic to its pods is dropped (restart the lab with one encryption.type)")
            usable = False
        elif mode == "wireguard":
            wg_peer = _wireguard_peer(peer, node_ip, cidrs, taken, waiting)
            usable = wg_peer is not None
            if wg_peer is not None:
                wireguard_peers.append(wg_peer)
        if host_too:
            (node_peers if usable else blocked_nodes).append(node_ip)
        if not usable:
            blocked.extend(cidrs)
            continue
        remotes.append(RemoteNode(router_ip, cidrs))
        if mode != "ipsec":
            continue
        prefixes = (*cidrs, IPv4Network(node_ip)) if host_too else cidrs
        engine_peers.append(
            _ipsec_peer(
                local, peer, router_ip=router_ip, prefixes=prefixes, keys=keys, current_key_id=current_key_id,
                waiting=waiting,
            )
        )
    engine = IPsecEngineState(local_router, tuple(engine_peers), frozenset(keys)) if mode == "ipsec" else None
    if mode == "ipsec" and current_key_id is None:
        waiting.append("no valid IPsec key in the secret yet")
    return DesiredDatapath(mode, tuple(vxlan_peers), tuple(remotes), engine, tuple(waiting),
                           tuple(wireguard_peers), tuple(blocked), tuple(node_peers), tuple(blocked_nodes))


def _wireguard_peer(
    peer: Node, node_ip: IPv4Address, cidrs: tuple[IPv4Network, ...], taken: set[bytes], waiting: list[str]
) -> WireGuardPeer | None:
    text = peer.wg_pub_key
    if text is None:
        waiting.append(f"{peer.name}: has not published a WireGuard public key")
        return None
    try:
        public_key = PublicKey.from_base64(text)
    except InvalidKeyError as exc:
        waiting.append(f"{peer.name}: WireGuard public key refused: {exc}")
        return None
    if public_key.raw == bytes(len(public_key.raw)) or public_key.raw in taken:
        waiting.append(f"{peer.name}: WireGuard public key refused: all zero or used by another node")
        return None
    taken.add(public_key.raw)
    # The node IP is always an allowed IP (Cilium since 1.15); routing decides whether host traffic uses it.
    allowed = (*cidrs, IPv4Network(node_ip))
    return WireGuardPeer(peer.name, public_key, (str(node_ip), WIREGUARD_PORT), allowed)


def _ipsec_peer(
    local: Node,
    peer: Node,
    *,
    router_ip: IPv4Address,
    prefixes: tuple[IPv4Network, ...],
    keys: Mapping[int, KeyLine],
    current_key_id: int | None,
    waiting: list[str],
) -> IPsecPeer:
    assert local.router_ip is not None
    local_router = ip_address(local.router_ip)
    sources = (IPv4Network(peer.node_ip),)
    in_keys = {
        key_id: derive_tunnel_key(key, router_ip, local_router, peer.boot_id, local.boot_id)
        for key_id, key in keys.items()
    }
    out_keys = {
        key_id: derive_tunnel_key(key, local_router, router_ip, local.boot_id, peer.boot_id)
        for key_id, key in keys.items()
    }
    spi = None if current_key_id is None else outbound_spi(current_key_id, peer.key_id, keys)
    if spi is None:
        if current_key_id is not None:
            waiting.append(f"{peer.name}: has not published an IPsec key ID we hold")
        return IPsecPeer(router_ip, prefixes, None, None, in_keys, out_keys, sources)
    out_key = out_keys.pop(spi)
    return IPsecPeer(router_ip, prefixes, spi, out_key, in_keys, out_keys, sources)
