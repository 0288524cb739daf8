"""What the underlay must show for each encryption mode, and the verdict over probes and capture.

Pure functions over what was measured, so a capture can be judged under any mode's expectation
(this is how the tests prove that a verdict can fail).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ciphermesh.lab.wire import PlainPacket, WireReport


@dataclass(frozen=True)
class ProbeRecord:
    """One probe between two nodes (their pods, or a node itself): what was tried and what came of it."""

    src_node: str
    dst_node: str
    protocol: str
    src_ip: str
    dst_ip: str
    ok: bool
    rtt_ms: float | None
    error: str | None
    src_host: bool = False
    dst_host: bool = False

    @property
    def label(self) -> str:
        return probe_label(self.protocol, self.src_node, self.dst_node, self.src_host, self.dst_host)

    def as_dict(self) -> dict[str, Any]:
        return {"src": self.src_node, "dst": self.dst_node, "protocol": self.protocol,
                "srcIP": self.src_ip, "dstIP": self.dst_ip, "srcHost": self.src_host,
                "dstHost": self.dst_host, "ok": self.ok, "rttMs": self.rtt_ms, "error": self.error}


def probe_label(protocol: str, src: str, dst: str, src_host: bool = False, dst_host: bool = False) -> str:
    """`icmp node-1 -> node-2` between pods; `(host)` marks an end that is the node itself."""
    return f"{protocol} {src}{' (host)' if src_host else ''} -> {dst}{' (host)' if dst_host else ''}"


@dataclass(frozen=True)
class WireEvidence:
    """What the underlay capture showed: header analysis, probe payloads found in its raw bytes, drops."""

    report: WireReport
    markers_sent: tuple[str, ...]
    markers_seen: tuple[str, ...]
    dropped_by_kernel: int

    def as_dict(self) -> dict[str, Any]:
        return self.report.as_dict() | {
            "espTunnels": [{"src": src, "dst": dst, "spi": spi, "packets": n}
                           for (src, dst, spi), n in sorted(self.report.esp_tunnels.items())],
            "wireguardPairs": [{"src": src, "dst": dst, "datagrams": n}
                               for (src, dst), n in sorted(self.report.wireguard_pairs.items())],
            "markersSent": len(self.markers_sent),
            "markersSeen": list(self.markers_seen),
            "droppedByKernel": self.dropped_by_kernel,
        }


def markers_in(capture: bytes, markers: Mapping[str, bytes]) -> tuple[str, ...]:
    """The labels of the markers whose bytes appear anywhere in the raw capture."""
    return tuple(label for label, marker in markers.items() if marker in capture)


class Expectation(Protocol):
    """One encryption mode's claim about the underlay; a new mode (WireGuard, node encryption) adds one."""

    @property
    def mode(self) -> str: ...

    def problems(self, evidence: WireEvidence) -> list[str]:
        """Why the capture contradicts the mode; empty if it agrees."""

    def summary(self, evidence: WireEvidence) -> list[str]:
        """One line per fact a reader checks, e.g. `ESP spi=0x3: 12 packets, plaintext between pods: 0`."""


def _plaintext_example(samples: Sequence[PlainPacket]) -> str:
    if not samples:
        return ""
    sample = samples[0]
    where = " inside VXLAN" if sample.inside_vxlan else ""
    return f", e.g. {sample.protocol} {sample.src} > {sample.dst}{where}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _leaks(evidence: WireEvidence, *, hosts: bool = False) -> list[str]:
    """What an encrypted mode must never show: packets in clear (between pods, or with `hosts` to or
    from node addresses), or a probe's payload readable."""
    report = evidence.report
    if hosts:
        count, samples, where = report.host_plaintext_count, report.host_plaintext_samples, "to or from node"
    else:
        count, samples, where = report.plaintext_count, report.plaintext_samples, "between pod"
    leaks = []
    if count:
        leaks.append(f"{_plural(count, 'plaintext packet')} {where} addresses on the underlay"
                     f"{_plaintext_example(samples)}")
    if evidence.markers_seen:
        leaks.append(f"probe payloads readable in the capture: {', '.join(evidence.markers_seen)}")
    return leaks


@dataclass(frozen=True)
class IPsecExpectation:
    """IPsec: no pod address in clear, and ESP with the current SPI in both directions of every tunnel."""

    spi: int
    tunnels: tuple[tuple[str, str], ...]
    mode: str = "ipsec"

    def problems(self, evidence: WireEvidence) -> list[str]:
        report = evidence.report
        problems = _leaks(evidence)
        for src, dst in self.tunnels:
            if report.esp_tunnels[(src, dst, self.spi)] == 0:
                others = sorted({spi for (s, d, spi) in report.esp_tunnels if (s, d) == (src, dst)})
                seen = f" (seen: {', '.join(f'spi={spi:#x}' for spi in others)})" if others else ""
                problems.append(f"no ESP with spi={self.spi:#x} from {src} to {dst}{seen}")
        return problems

    def summary(self, evidence: WireEvidence) -> list[str]:
        report = evidence.report
        lines = [f"ESP spi={self.spi:#x}: {report.esp_by_spi[self.spi]} packets, "
                 f"plaintext between pods: {report.plaintext_count}"]
        other = {spi: n for spi, n in report.esp_by_spi.items() if spi != self.spi}
        if other:
            counts = ", ".join(f"spi={spi:#x}: {n}" for spi, n in sorted(other.items()))
            lines.append(f"ESP with other SPIs: {counts}")
        covered = sum(1 for src, dst in self.tunnels if report.esp_tunnels[(src, dst, self.spi)])
        lines.append(f"tunnels with ESP spi={self.spi:#x}: {covered}/{len(self.tunnels)}")
        lines.append(f"probe payloads found in the capture: {len(evidence.markers_seen)}/"
                     f"{len(evidence.markers_sent)}")
        return lines


@dataclass(frozen=True)
class WireGuardExpectation:
    """WireGuard: no pod address in clear, and UDP 51871 datagrams in both directions between node IPs."""

    pairs: tuple[tuple[str, str], ...]
    mode: str = "wireguard"

    def problems(self, evidence: WireEvidence) -> list[str]:
        report = evidence.report
        problems = _leaks(evidence)
        for src, dst in self.pairs:
            if report.wireguard_pairs[(src, dst)] == 0:
                problems.append(f"no WireGuard (UDP 51871) from {src} to {dst}")
        return problems

    def summary(self, evidence: WireEvidence) -> list[str]:
        report = evidence.report
        covered = sum(1 for pair in self.pairs if report.wireguard_pairs[pair])
        return [
            f"WireGuard (UDP 51871): {report.wireguard} datagrams, plaintext between pods: "
            f"{report.plaintext_count}",
            f"node pairs with WireGuard: {covered}/{len(self.pairs)}",
            f"probe payloads found in the capture: {len(evidence.markers_seen)}/{len(evidence.markers_sent)}",
        ]


@dataclass(frozen=True)
class SanityExpectation:
    """Encryption disabled: the capture must show the probes in clear, or the check itself is blind."""

    mode: str = "disabled"

    def problems(self, evidence: WireEvidence) -> list[str]:
        problems = []
        if evidence.report.plaintext_count == 0:
            problems.append("sanity mode: encryption is disabled, yet no plaintext between pods was seen; "
                            "the check itself is broken")
        missing = [label for label in evidence.markers_sent if label not in evidence.markers_seen]
        # In a capture that lost packets a missing payload proves nothing; `judge` fails it as incomplete.
        if missing and not evidence.dropped_by_kernel:
            problems.append(f"sanity mode: probe payloads not found in the capture: {', '.join(missing)}")
        return problems

    def summary(self, evidence: WireEvidence) -> list[str]:
        report = evidence.report
        return [
            f"sanity mode (encryption disabled): plaintext between pods: {report.plaintext_count} "
            f"(expected > 0), ESP: {report.esp}",
            f"probe payloads found in the capture: {len(evidence.markers_seen)}/"
            f"{len(evidence.markers_sent)} (expected all)",
        ]


@dataclass(frozen=True)
class NodeEncryptionExpectation:
    """Node encryption: nothing to or from a node address in clear; host probes' payloads unreadable."""

    mode: str = "node-encryption"

    def problems(self, evidence: WireEvidence) -> list[str]:
        return _leaks(evidence, hosts=True)

    def summary(self, evidence: WireEvidence) -> list[str]:
        return [
            f"node-to-node (node encryption on): plaintext to or from node addresses: "
            f"{evidence.report.host_plaintext_count}",
            f"host probe payloads found in the capture: {len(evidence.markers_seen)}/"
            f"{len(evidence.markers_sent)}",
        ]


@dataclass(frozen=True)
class NodeSanityExpectation:
    """Node encryption off: host traffic must be seen in clear, or the check is blind (Cilium's sanity mode).

    `must_see` are the probes that travel in clear; `must_not_see` those ciphermesh always encrypts
    (a node to a remote pod goes through the engine from its router IP).
    """

    must_see: tuple[str, ...]
    must_not_see: tuple[str, ...] = ()
    mode: str = "node-sanity"

    def problems(self, evidence: WireEvidence) -> list[str]:
        problems = []
        missing = [label for label in self.must_see if label not in evidence.markers_seen]
        if missing and not evidence.dropped_by_kernel:
            problems.append("sanity mode (node encryption off): host probe payloads not found in the "
                            f"capture: {', '.join(missing)}")
        readable = [label for label in self.must_not_see if label in evidence.markers_seen]
        if readable:
            problems.append(f"probe payloads readable in the capture: {', '.join(readable)}")
        return problems

    def summary(self, evidence: WireEvidence) -> list[str]:
        seen = sum(1 for label in self.must_see if label in evidence.markers_seen)
        return [
            f"node-to-node sanity mode (node encryption off): plaintext to or from node addresses: "
            f"{evidence.report.host_plaintext_count} (expected > 0)",
            f"host probe payloads found in the capture: {seen}/{len(self.must_see)} (expected all)",
        ]


@dataclass(frozen=True)
class StrictModeExpectation:
    """Strict mode: plaintext pod packets forced out a node are dropped there and counted, never on the wire.

    `injected` and `dropped` count, per node, the packets sent and its guard's drop counter's increase.
    """

    injected: Mapping[str, int]
    dropped: Mapping[str, int | None]
    mode: str = "strict-mode"

    def problems(self, evidence: WireEvidence) -> list[str]:
        problems = []
        if evidence.markers_seen:
            problems.append(f"strict mode let plaintext through: {', '.join(evidence.markers_seen)}")
        for node, sent in self.injected.items():
            dropped = self.dropped.get(node)
            if dropped is None:
                problems.append(f"{node}: no strict-mode drop counter (is the guard in place?)")
            elif dropped < sent:
                problems.append(f"{node}: strict mode counted {dropped} drops for {sent} plaintext packets")
        return problems

    def summary(self, evidence: WireEvidence) -> list[str]:
        sent = sum(self.injected.values())
        dropped = sum(d or 0 for d in self.dropped.values())
        return [f"strict mode: {dropped} unencrypted drops counted for {sent} plaintext packets forced out "
                f"cilium_vxlan; seen on the wire: {len(evidence.markers_seen)}"]


@dataclass(frozen=True)
class Verdict:
    """Pass or fail, with every reason for a failure."""

    passed: bool
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons)}


def judge(probes: Sequence[ProbeRecord], evidence: WireEvidence, expectation: Expectation) -> Verdict:
    """Pass only if every probe succeeded, the capture is complete, and it shows what the mode promises."""
    reasons = [f"{probe.label}: {probe.error}" for probe in probes if not probe.ok]
    if not probes:
        reasons.append("no probes were run")
    if evidence.dropped_by_kernel:
        reasons.append(f"the capture is incomplete: {evidence.dropped_by_kernel} packets dropped "
                       "by the kernel")
    reasons += expectation.problems(evidence)
    return Verdict(not reasons, tuple(reasons))


def tunnel_pairs(router_ips: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """Every ordered pair of distinct addresses (router IPs, node IPs): each direction of each tunnel."""
    ips = list(router_ips)
    return tuple((a, b) for a in ips for b in ips if a != b)
