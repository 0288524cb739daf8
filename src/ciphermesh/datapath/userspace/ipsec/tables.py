"""One immutable generation of the engine's lookup tables, and what it does to one packet each way.

A generation is built from the desired state and the engine's `SALedger`, which every generation of one
engine shares: an SA whose direction, outer addresses, SPI and key the engine has held before is that same
object again (its sequence number and replay window go on, also after its peer was away); anything else
is new. The packet loop reads one generation per batch, `apply` swaps in the next.
"""

from __future__ import annotations

import secrets
import socket
import struct
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Address

from ciphermesh.datapath.desired import IPsecEngineState, IPsecPeer
from ciphermesh.datapath.userspace.ipsec.drops import EngineDrop
from ciphermesh.datapath.userspace.ipsec.prefix_map import PrefixMap
from ciphermesh.esp import (
    Decapsulated,
    InboundSA,
    InnerPacketError,
    OutboundSA,
    SADatabase,
    SequenceExhausted,
    cipher_for,
)
from ciphermesh.esp.ledger import SALedger
from ciphermesh.keys import KeyMaterial

IP_PKTINFO = 8  # <linux/in.h>; Python's socket module does not export it
_in_pktinfo = struct.Struct("=i4s4s")  # ifindex, spec_dst (the source to use), addr
_IPV4_HEADER = 20

_OUT_NO_STATES = EngineDrop.XfrmOutNoStates
_OUT_MODE = EngineDrop.XfrmOutStateModeError
_IN_HDR = EngineDrop.XfrmInHdrError
_IN_TMPL = EngineDrop.XfrmInTmplMismatch
_OUT_LOOP = EngineDrop.EngineOutLoop
_PROTO_ESP = 50

# (direction, outer source, outer destination, SPI, key): one SA per identity for the engine's life.
SAIdentity = tuple[str, bytes, bytes, int, KeyMaterial]


@dataclass(frozen=True)
class SAParams:
    """How every SA of the engine is made: ESN on, a 1024-packet replay window (the cluster's contract)."""

    esn: bool = True
    replay_window: int = 1024


class PeerStats:
    """Inner packets and bytes to and from one peer; kept across generations while the peer stays."""

    __slots__ = ("bytes_in", "bytes_out", "packets_in", "packets_out")

    def __init__(self) -> None:
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0


class PeerPath:
    """One peer in one generation: its desired state, socket address, SAs and stats."""

    __slots__ = ("in_sas", "out_sa", "peer", "sockaddr", "stats")

    def __init__(
        self, peer: IPsecPeer, out_sa: OutboundSA | None, in_sas: dict[int, InboundSA], stats: PeerStats
    ) -> None:
        self.peer = peer
        self.sockaddr = (str(peer.router_ip), 0)
        self.out_sa = out_sa
        self.in_sas = in_sas
        self.stats = stats


class IPsecTables:
    """Routes by inner destination, inbound SAs by (outer src, outer dst, SPI), peers by router IP."""

    __slots__ = (
        "_by_router",
        "_routes4",
        "_routes6",
        "_sas",
        "_sources4",
        "_sources6",
        "ancillary",
        "counts",
        "ledger",
        "local_packed",
        "local_router_ip",
        "paths",
        "sad",
    )

    def __init__(
        self,
        *,
        local_router_ip: IPv4Address | None,
        paths: tuple[PeerPath, ...],
        sas: dict[SAIdentity, OutboundSA | InboundSA],
        sad: SADatabase,
        counts: dict[str, int],
        ledger: SALedger,
    ) -> None:
        self.local_router_ip = local_router_ip
        self.local_packed = local_router_ip.packed if local_router_ip is not None else b""
        self.paths = paths
        self._sas = sas
        self.sad = sad
        self.counts = counts
        self.ledger = ledger
        self._by_router = {path.peer.router_ip.packed: path for path in paths}
        self._routes4: PrefixMap[PeerPath] = PrefixMap(
            4, ((cidr, path) for path in paths for cidr in path.peer.pod_cidrs if cidr.version == 4)
        )
        self._routes6: PrefixMap[PeerPath] = PrefixMap(
            6, ((cidr, path) for path in paths for cidr in path.peer.pod_cidrs if cidr.version == 6)
        )
        sources = [(cidr, path) for path in paths for cidr in (*path.peer.pod_cidrs, *path.peer.sources)]
        self._sources4: PrefixMap[PeerPath] = PrefixMap(4, ((c, p) for c, p in sources if c.version == 4))
        self._sources6: PrefixMap[PeerPath] = PrefixMap(6, ((c, p) for c, p in sources if c.version == 6))
        # IP_PKTINFO picks the outer source per packet, so the socket need not be bound to an address
        # that may change with the next state.
        self.ancillary: list[tuple[int, int, bytes]] = (
            []
            if local_router_ip is None
            else [(socket.IPPROTO_IP, IP_PKTINFO, _in_pktinfo.pack(0, local_router_ip.packed, bytes(4)))]
        )

    @classmethod
    def empty(cls, counts: dict[str, int], ledger: SALedger | None = None) -> IPsecTables:
        """No peers and no SAs: every packet is a counted drop. Later generations share `ledger`."""
        ledger = SALedger() if ledger is None else ledger
        return cls(local_router_ip=None, paths=(), sas={}, sad=SADatabase(), counts=counts, ledger=ledger)

    @classmethod
    def build(cls, state: IPsecEngineState, params: SAParams, previous: IPsecTables) -> IPsecTables:
        """The generation for `state`: SAs from the engine's ledger, peer stats from `previous`."""
        local = state.local_router_ip
        ledger = previous.ledger
        sas: dict[SAIdentity, OutboundSA | InboundSA] = {}
        sad = SADatabase()
        sad.counters = previous.sad.counters
        paths = []
        with ledger.all_or_nothing():
            for peer in state.peers:
                out_sa = None
                for spi, key in peer.out_keys.items():
                    identity = ("out", local.packed, peer.router_ip.packed, spi, key.material)
                    make_out = partial(_new_outbound, spi, identity, params)
                    sa = ledger.outbound(identity[1:4], key.material, make_out)
                    sas[identity] = sa
                    if spi == peer.out_spi:
                        out_sa = sa
                in_sas = {}
                for spi, key in peer.in_keys.items():
                    identity = ("in", peer.router_ip.packed, local.packed, spi, key.material)
                    make_in = partial(_new_inbound, spi, identity, params)
                    in_sa = ledger.inbound(identity[1:4], key.material, make_in)
                    sas[identity] = in_sa
                    in_sas[spi] = in_sa
                    sad.add(peer.router_ip, local, in_sa)
                old_path = previous._by_router.get(peer.router_ip.packed)
                stats = old_path.stats if old_path is not None else PeerStats()
                paths.append(PeerPath(peer, out_sa, in_sas, stats))
        return cls(local_router_ip=local, paths=tuple(paths), sas=sas, sad=sad, counts=previous.counts,
                   ledger=ledger)

    def keys_in_use(self) -> int:
        """Distinct keys over all SAs, as Cilium counts XFRM states' keys."""
        return len({identity[4] for identity in self._sas})

    def seal(self, packet: bytes) -> tuple[PeerPath, bytes] | None:
        """The peer and ESP payload for an inner packet from the TUN, or None after counting the drop."""
        size = len(packet)
        version = packet[0] >> 4 if size else 0
        if version == 4 and size >= 20:
            if packet[9] == _PROTO_ESP and packet[12:16] == self.local_packed:
                # Our own ESP, routed back into the TUN: sealing it again would loop forever.
                self.counts[_OUT_LOOP] += 1
                return None
            path = self._routes4.lookup(int.from_bytes(packet[16:20], "big"))
        elif version == 6 and size >= 40:
            path = self._routes6.lookup(int.from_bytes(packet[24:40], "big"))
        else:
            self.counts[_OUT_MODE] += 1
            return None
        if path is None or path.out_sa is None:
            self.counts[_OUT_NO_STATES] += 1
            return None
        try:
            return path, path.out_sa.encapsulate(packet)
        except (SequenceExhausted, InnerPacketError):
            return None  # the SA has counted it

    def open(self, packet: bytes) -> tuple[PeerPath, bytes] | None:
        """The peer and inner packet of an ESP packet from the raw socket (outer header included), or None."""
        # A raw IPv4 socket hands over only whole, checksummed, reassembled protocol-50 packets, so
        # the header needs no more checks than this (parse_outer's would cost a third of the lookup).
        if len(packet) < _IPV4_HEADER or packet[0] >> 4 != 4:
            self.counts[_IN_HDR] += 1
            return None
        src = packet[12:16]
        result = self.sad.decapsulate(src, packet[16:20], packet[(packet[0] & 0x0F) << 2 :])
        if not isinstance(result, Decapsulated):
            return None  # counted by the SA database or the SA
        inner = result.inner
        if result.next_header == 4:
            owner = self._sources4.lookup(int.from_bytes(inner[12:16], "big"))
        else:
            owner = self._sources6.lookup(int.from_bytes(inner[8:24], "big"))
        path = self._by_router.get(src)
        if owner is None or owner is not path:
            self.counts[_IN_TMPL] += 1
            return None
        return owner, inner


def _new_outbound(spi: int, identity: SAIdentity, params: SAParams) -> OutboundSA:
    # A random salt in the GCM IV, as Linux's seqiv has: the IV stays unique per SA without showing the count.
    salt = int.from_bytes(secrets.token_bytes(8), "big")
    return OutboundSA(spi, cipher_for(identity[4]), esn=params.esn, iv_salt=salt)


def _new_inbound(spi: int, identity: SAIdentity, params: SAParams) -> InboundSA:
    return InboundSA(spi, cipher_for(identity[4]), esn=params.esn, replay_window=params.replay_window)
