"""The desired datapath as plain data: what the agent plans and every engine and netlink pass applies.

The agent-datapath contract: links and routes follow `DesiredDatapath`'s VXLAN peers and remotes, an
IPsec engine its `engine` state (the local router IP and, per peer, prefixes and SA keys), a WireGuard
engine its `wireguard_peers`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from types import MappingProxyType
from typing import Literal

from ciphermesh.datapath.netlink.links import vtep_mac
from ciphermesh.keys import KeyLine
from ciphermesh.wireguard.keys import PublicKey

MIN_SPI = 1  # RFC 4303 2.1: SPI 0 is reserved for local use and never goes on the wire
MAX_SPI = 0xFFFFFFFF

PodCIDR = IPv4Network | IPv6Network
Mode = Literal["disabled", "ipsec", "wireguard"]
WIREGUARD_PORT = 51871


@dataclass(frozen=True)
class IPsecPeer:
    """One remote node: where its ESP goes, which inner prefixes it owns, and its SA keys (already derived).

    `out_key` is the key for local -> peer under `out_spi` (both None: no outbound SA, packets are dropped);
    `in_keys` maps each SPI the peer may send under to the key for peer -> local (two during a rotation);
    `standby_out_keys` holds outbound keys kept installed but unused (the other SPI during a rotation), so
    their sequence numbers carry on if traffic moves back to them, as Cilium keeps one OUT state per SPI.
    `sources` are inner sources accepted from the peer besides its prefixes: its node IP, whose replies to
    our pods come through its engine even when its host traffic to us does not.
    """

    router_ip: IPv4Address
    pod_cidrs: tuple[PodCIDR, ...]
    out_spi: int | None
    out_key: KeyLine | None
    in_keys: Mapping[int, KeyLine]
    standby_out_keys: Mapping[int, KeyLine] = field(default_factory=dict)
    sources: tuple[PodCIDR, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.router_ip, IPv4Address):
            raise ValueError(f"peer router IP {self.router_ip!r}: the engine's outer header is IPv4 only")
        cidrs = tuple(self.pod_cidrs)
        if not cidrs:
            raise ValueError(f"peer {self.router_ip}: no pod CIDRs")
        for cidr in (*cidrs, *self.sources):
            if not isinstance(cidr, IPv4Network | IPv6Network):
                raise ValueError(f"peer {self.router_ip}: prefix {cidr!r} is not an IP network")
        object.__setattr__(self, "sources", tuple(self.sources))
        if (self.out_spi is None) != (self.out_key is None):
            raise ValueError(f"peer {self.router_ip}: out_spi and out_key must be given together")
        if self.out_spi is not None:
            _check_spi(self.router_ip, "outbound", self.out_spi)
        in_keys = dict(self.in_keys)
        for spi in in_keys:
            _check_spi(self.router_ip, "inbound", spi)
        object.__setattr__(self, "pod_cidrs", cidrs)
        standby = dict(self.standby_out_keys)
        for spi in standby:
            _check_spi(self.router_ip, "standby outbound", spi)
        if self.out_spi in standby:
            raise ValueError(f"peer {self.router_ip}: SPI {self.out_spi} is both active and standby")
        object.__setattr__(self, "in_keys", MappingProxyType(in_keys))
        object.__setattr__(self, "standby_out_keys", MappingProxyType(standby))

    @property
    def out_keys(self) -> dict[int, KeyLine]:
        """Every outbound key held, standby ones first, then the active one under `out_spi`."""
        keys = dict(self.standby_out_keys)
        if self.out_spi is not None and self.out_key is not None:
            keys[self.out_spi] = self.out_key
        return keys


@dataclass(frozen=True)
class IPsecEngineState:
    """The whole desired state: the local router IP (outer source), every peer, and the node's key IDs.

    `key_ids` are the SPIs of every key the node holds now (current and in their grace period): a kernel
    engine keeps the SAs of a peer that left under them, so a peer that returns with the same keys finds
    its sequence numbers where they were.
    """

    local_router_ip: IPv4Address
    peers: tuple[IPsecPeer, ...]
    key_ids: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.local_router_ip, IPv4Address):
            raise ValueError(
                f"local router IP {self.local_router_ip!r}: the engine's outer header is IPv4 only"
            )
        peers = tuple(self.peers)
        _check_peers(self.local_router_ip, peers)
        object.__setattr__(self, "peers", peers)
        key_ids = frozenset(self.key_ids)
        if bad := [spi for spi in key_ids if not isinstance(spi, int) or not MIN_SPI <= spi <= MAX_SPI]:
            raise ValueError(f"key IDs {bad!r} are not SPIs in {MIN_SPI}..{MAX_SPI}")
        object.__setattr__(self, "key_ids", key_ids)


def _check_spi(router_ip: IPv4Address, direction: str, spi: object) -> None:
    if not isinstance(spi, int) or not MIN_SPI <= spi <= MAX_SPI:
        raise ValueError(f"peer {router_ip}: {direction} SPI {spi!r} is not in {MIN_SPI}..{MAX_SPI}")


def _check_peers(local: IPv4Address, peers: Iterable[IPsecPeer]) -> None:
    routers: set[IPv4Address] = set()
    prefixes: list[tuple[PodCIDR, IPv4Address]] = []
    for peer in peers:
        if peer.router_ip == local:
            raise ValueError(f"peer router IP {peer.router_ip} is the local router IP")
        if peer.router_ip in routers:
            raise ValueError(f"peer router IP {peer.router_ip} appears twice")
        routers.add(peer.router_ip)
        for cidr in peer.pod_cidrs:
            for other, owner in prefixes:
                if cidr.version == other.version and cidr.overlaps(other):
                    raise ValueError(
                        f"pod CIDR {cidr} of peer {peer.router_ip} overlaps {other} of peer {owner}"
                    )
            prefixes.append((cidr, peer.router_ip))


@dataclass(frozen=True)
class VxlanPeer:
    """A remote node as cilium_vxlan sees it."""

    node_ip: IPv4Address
    router_ip: IPv4Address

    @property
    def mac(self) -> str:
        return vtep_mac(self.router_ip)


@dataclass(frozen=True)
class RemoteNode:
    """A peer as the engine routes to it: its router IP lies in one of its pod CIDRs."""

    router_ip: IPv4Address
    pod_cidrs: tuple[IPv4Network, ...]


@dataclass(frozen=True)
class WireGuardPeer:
    """A peer as cilium_wg0 holds it: public key, `nodeIP:51871`, pod CIDRs and node IP as allowed IPs."""

    name: str
    public_key: PublicKey
    endpoint: tuple[str, int]
    allowed_ips: tuple[IPv4Network, ...]


@dataclass(frozen=True)
class DesiredDatapath:
    """What one node's kernel and engine should hold."""

    mode: Mode
    vxlan_peers: tuple[VxlanPeer, ...]
    remotes: tuple[RemoteNode, ...]
    engine: IPsecEngineState | None
    waiting: tuple[str, ...]
    wireguard_peers: tuple[WireGuardPeer, ...] = ()
    # Pod CIDRs of peers this node cannot encrypt to yet: only their fail-closed route, never plaintext.
    blocked: tuple[IPv4Network, ...] = ()
    # Node encryption: peers' node IPs whose host traffic goes through the engine, and those held back.
    node_peers: tuple[IPv4Address, ...] = ()
    blocked_nodes: tuple[IPv4Address, ...] = ()
