"""Proof on the wire: what an underlay capture holds (ESP by SPI, WireGuard, and any plaintext)."""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from ciphermesh.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW, parse_pcap, strip_ethernet

VXLAN_PORT = 8472
WIREGUARD_PORT = 51871
LINKTYPE_LINUX_SLL = 113
_PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 50: "ESP"}


@dataclass(frozen=True)
class PlainPacket:
    """A packet from or to a pod or node address that crossed the wire unencrypted."""

    src: str
    dst: str
    protocol: str
    inside_vxlan: bool


@dataclass
class WireReport:
    """What a capture shows, counted."""

    frames: int = 0
    esp_by_spi: Counter[int] = field(default_factory=Counter)
    esp_tunnels: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    wireguard: int = 0
    wireguard_pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    plaintext_count: int = 0
    plaintext_samples: list[PlainPacket] = field(default_factory=list)
    # Plaintext with a node address at one end (node to node, pod to node, node to pod): node encryption's.
    host_plaintext_count: int = 0
    host_plaintext_samples: list[PlainPacket] = field(default_factory=list)

    @property
    def esp(self) -> int:
        return sum(self.esp_by_spi.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "esp": self.esp,
            "espBySPI": {str(spi): n for spi, n in sorted(self.esp_by_spi.items())},
            "wireguard": self.wireguard,
            "plaintext": self.plaintext_count,
            "plaintextSamples": [vars(sample) for sample in self.plaintext_samples],
            "plaintextHost": self.host_plaintext_count,
            "plaintextHostSamples": [vars(sample) for sample in self.host_plaintext_samples],
        }


def _ipv4(packet: bytes) -> tuple[int, str, str, bytes] | None:
    """(protocol, src, dst, payload) of an IPv4 packet, or None for anything else."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl:
        return None
    src = str(ipaddress.IPv4Address(packet[12:16]))
    dst = str(ipaddress.IPv4Address(packet[16:20]))
    return packet[9], src, dst, packet[ihl:]


def _link_payload(linktype: int, frame: bytes) -> bytes | None:
    if linktype == LINKTYPE_ETHERNET:
        return strip_ethernet(frame)
    if linktype == LINKTYPE_LINUX_SLL:
        return frame[16:] if len(frame) > 16 and frame[14:16] == b"\x08\x00" else None
    if linktype == LINKTYPE_RAW:
        return frame
    return None


class _Analyser:
    def __init__(
        self, pod_cidrs: Iterable[ipaddress.IPv4Network], node_ips: Iterable[str], samples: int
    ) -> None:
        self.pods = tuple(pod_cidrs)
        self.nodes = frozenset(node_ips)
        self.samples = samples
        self.report = WireReport()

    def _is_pod(self, address: str) -> bool:
        ip = ipaddress.IPv4Address(address)
        return any(ip in cidr for cidr in self.pods)

    def packet(self, packet: bytes, inside_vxlan: bool = False) -> None:
        parsed = _ipv4(packet)
        if parsed is None:
            return
        protocol, src, dst, payload = parsed
        if protocol == 50:
            if len(payload) >= 4:
                (spi,) = struct.unpack_from("!I", payload)
                self.report.esp_by_spi[spi] += 1
                self.report.esp_tunnels[(src, dst, spi)] += 1
            return
        if protocol == 17 and len(payload) >= 8:
            sport, dport = struct.unpack_from("!HH", payload)
            if not inside_vxlan and dport == VXLAN_PORT and len(payload) >= 16:
                inner = strip_ethernet(payload[16:])
                if inner is not None:
                    self.packet(inner, inside_vxlan=True)
                return
            if WIREGUARD_PORT in (sport, dport):
                self.report.wireguard += 1
                self.report.wireguard_pairs[(src, dst)] += 1
                return
        sample = PlainPacket(src, dst, _PROTO_NAMES.get(protocol, str(protocol)), inside_vxlan)
        if src in self.nodes or dst in self.nodes:
            self.report.host_plaintext_count += 1
            if len(self.report.host_plaintext_samples) < self.samples:
                self.report.host_plaintext_samples.append(sample)
        elif self._is_pod(src) or self._is_pod(dst):
            self.report.plaintext_count += 1
            if len(self.report.plaintext_samples) < self.samples:
                self.report.plaintext_samples.append(sample)


def analyse_capture(
    pcap: bytes,
    pod_cidrs: Iterable[ipaddress.IPv4Network],
    *,
    node_ips: Iterable[str] = (),
    samples: int = 10,
) -> WireReport:
    """Count ESP per SPI, WireGuard datagrams per address pair and plaintext, VXLAN unwrapped.

    Plaintext with one of `node_ips` at either end is counted apart (host plaintext) from pod plaintext.
    """
    capture = parse_pcap(pcap)
    analyser = _Analyser(pod_cidrs, node_ips, samples)
    for record in capture.records:
        analyser.report.frames += 1
        payload = _link_payload(capture.linktype, record.data)
        if payload is not None:
            analyser.packet(payload)
    return analyser.report
