"""tshark 4.0 decrypts and authenticates the ESP our cores produce, keyed by our esp_sa records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest
from scapy.packet import Packet

from ciphermesh.esp.packet import wrap_ipv4, wrap_ipv6
from ciphermesh.keys import derive_tunnel_key, esp_sa_entry, parse_line
from ciphermesh.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW, build_pcap, ethernet_frame
from ciphermesh.tshark import EspFrame, TsharkError, decrypt_esp, tshark_path
from tests.support.esp_interop import (
    BOOT_A,
    KEY_LINES,
    NODE_A,
    NODE_A6,
    NODE_B,
    NODE_B6,
    TCP_PAYLOAD,
    UDP_PAYLOAD,
    IPAddress,
    inner_packets,
    outbound,
    tunnel_key,
)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(tshark_path() is None, reason="tshark is not installed"),
]

INNER_FIELDS = (
    "ip.len",
    "ipv6.plen",
    "icmp.type",
    "icmp.seq",
    "icmpv6.type",
    "icmpv6.echo.sequence_number",
    "tcp.payload",
    "udp.length",
    "data.data",
)
# Every key shape tshark 4.0 can check (the brief's four first); ESN is off, tshark has no ESN.
TSHARK_KEYS = [
    "gcm128",
    "gcm256",
    "cbc-sha256",
    "cbc-sha512",
    "gcm192",
    "gcm128-icv12",
    "gcm128-icv8",
    "cbc-sha256-rfc4868",
    "cbc-sha1",
]


@dataclass(frozen=True)
class Sent:
    """One frame of a capture as we made it: its SA and the inner packet inside."""

    src: IPAddress
    dst: IPAddress
    spi: int
    seq: int
    inner: Packet


def make_capture(
    path: Path, name: str, *, version: int = 4, esn: bool = False, linktype: int = LINKTYPE_RAW
) -> tuple[list[Sent], list[str]]:
    """Forward packets A->B interleaved with reverse packets B->A; returns them and both esp_sa records."""
    a, b = (NODE_A, NODE_B) if version == 4 else (NODE_A6, NODE_B6)
    keys = {(a, b): tunnel_key(name, a, b), (b, a): tunnel_key(name, b, a)}
    senders = {pair: outbound(key, esn=esn) for pair, key in keys.items()}
    wrap = wrap_ipv4 if version == 4 else wrap_ipv6
    sent: list[Sent] = []
    frames: list[tuple[int, bytes]] = []
    for forward, reverse in zip(inner_packets(version), inner_packets(version, reverse=True), strict=True):
        for (src, dst), inner in (((a, b), forward), ((b, a), reverse)):
            sender = senders[(src, dst)]
            packet = wrap(src.packed, dst.packed, sender.encapsulate(bytes(inner)))
            frames.append((1_700_000_000_000_000_000 + len(frames) * 1000, packet))
            sent.append(Sent(src, dst, sender.spi, sender.seq, inner))
    if linktype == LINKTYPE_ETHERNET:
        frames = [(ts, ethernet_frame(p)) for ts, p in frames]
    path.write_bytes(build_pcap(frames, linktype=linktype))
    return sent, [esp_sa_entry(key, src, dst) for (src, dst), key in keys.items()]


def assert_inner_visible(frame: EspFrame, sent: Sent) -> None:
    """tshark's view of the decrypted inner packet matches what went in."""
    inner = sent.inner
    ip_field = "ip" if inner.version == 4 else "ipv6"
    assert frame.fields[f"{ip_field}.src"] == (str(sent.src), inner.src)
    assert frame.fields[f"{ip_field}.dst"] == (str(sent.dst), inner.dst)
    if inner.version == 4:
        assert frame.fields["ip.len"][1] == str(len(inner))
    else:
        assert frame.fields["ipv6.plen"][1] == str(len(inner) - 40)
    if ICMP in inner:
        assert frame.first("icmp.type") == str(inner[ICMP].type)
        assert frame.first("icmp.seq") == str(inner[ICMP].seq)
    elif ICMPv6EchoRequest in inner or ICMPv6EchoReply in inner:
        echo = inner[ICMPv6EchoRequest] if ICMPv6EchoRequest in inner else inner[ICMPv6EchoReply]
        assert frame.first("icmpv6.type") == str(echo.type)
        assert frame.first("icmpv6.echo.sequence_number") == str(echo.seq)
    elif TCP in inner:
        assert frame.first("tcp.payload") == TCP_PAYLOAD.hex()
    else:
        assert UDP in inner
        assert frame.first("data.data") == UDP_PAYLOAD.hex()


def assert_all_verified(frames: list[EspFrame], sent: list[Sent]) -> None:
    assert len(frames) == len(sent)
    for frame, expected in zip(frames, sent, strict=True):
        assert frame.icv_good, f"frame {frame.number}: {dict(frame.fields)}"
        assert (frame.spi, frame.sequence) == (expected.spi, expected.seq)
        inner_ip = "ip" if expected.inner.version == 4 else "ipv6"
        esp = frame.protocols.index("esp")
        assert frame.protocols[esp - 1 : esp + 2] == (inner_ip, "esp", inner_ip)
        assert_inner_visible(frame, expected)


@pytest.mark.parametrize("name", TSHARK_KEYS)
def test_tshark_verifies_every_frame_with_per_tunnel_keys(tmp_path: Path, name: str) -> None:
    sent, entries = make_capture(tmp_path / f"{name}.pcap", name)
    assert_all_verified(decrypt_esp(tmp_path / f"{name}.pcap", entries, extra_fields=INNER_FIELDS), sent)


@pytest.mark.parametrize("name", ["gcm128", "cbc-sha256"])
def test_tshark_verifies_ipv6_tunnels(tmp_path: Path, name: str) -> None:
    sent, entries = make_capture(tmp_path / "v6.pcap", name, version=6)
    assert entries[0].startswith('"IPv6","fd00:10:1::1","fd00:10:2::1"')
    assert_all_verified(decrypt_esp(tmp_path / "v6.pcap", entries, extra_fields=INNER_FIELDS), sent)


def test_tshark_verifies_an_ethernet_capture(tmp_path: Path) -> None:
    sent, entries = make_capture(tmp_path / "eth.pcap", "gcm128", linktype=LINKTYPE_ETHERNET)
    frames = decrypt_esp(tmp_path / "eth.pcap", entries, extra_fields=INNER_FIELDS)
    assert_all_verified(frames, sent)
    assert all(frame.protocols[0] == "eth" for frame in frames)


def _entries_with(name: str, a_boot: str, b_boot: str) -> list[str]:
    line = parse_line(KEY_LINES[name])
    return [
        esp_sa_entry(derive_tunnel_key(line, NODE_A, NODE_B, a_boot, b_boot), NODE_A, NODE_B),
        esp_sa_entry(derive_tunnel_key(line, NODE_B, NODE_A, b_boot, a_boot), NODE_B, NODE_A),
    ]


@pytest.mark.parametrize("name", ["gcm128", "gcm256", "cbc-sha256", "cbc-sha512"])
def test_tshark_rejects_every_frame_under_a_wrong_key(tmp_path: Path, name: str) -> None:
    sent, entries = make_capture(tmp_path / "c.pcap", name)
    line = parse_line(KEY_LINES[name])
    wrong = {
        # node B rebooted: keys derived from its new boot ID no longer match the capture.
        "stale boot ID": _entries_with(name, BOOT_A, "00000000-0000-4000-8000-000000000000"),
        # each direction has its own key; the other direction's key must not verify.
        "directions swapped": [
            esp_sa_entry(tunnel_key(name, NODE_B, NODE_A), NODE_A, NODE_B),
            esp_sa_entry(tunnel_key(name, NODE_A, NODE_B), NODE_B, NODE_A),
        ],
        # the global key itself, i.e. without the per-tunnel derivation.
        "global key": [esp_sa_entry(line, NODE_A, NODE_B), esp_sa_entry(line, NODE_B, NODE_A)],
    }
    assert all(records != entries for records in wrong.values())
    for why, records in wrong.items():
        frames = decrypt_esp(tmp_path / "c.pcap", records)
        assert len(frames) == len(sent)
        assert not any(frame.icv_good for frame in frames), why
        # tshark gives no verdict on a frame whose garbage "inner packet" its dissectors choke on,
        # but every SA must have been tried and failed on some frame.
        rejected = {frame.fields["ip.src"][0] for frame in frames if frame.first("esp.icv_bad") == "1"}
        assert rejected == {str(NODE_A), str(NODE_B)}, why


@pytest.mark.parametrize("name", ["gcm128", "cbc-sha256"])
def test_tshark_without_esn_support_rejects_esn_frames(tmp_path: Path, name: str) -> None:
    # With ESN the high 32 bits enter the GCM AAD (or the HMAC input) even while they are 0, so
    # tshark 4.0, which knows no ESN, computes a different ICV: ESN is checked with scapy instead.
    sent, entries = make_capture(tmp_path / "esn.pcap", name, esn=True)
    frames = decrypt_esp(tmp_path / "esn.pcap", entries)
    assert len(frames) == len(sent)
    assert all(frame.icv_checked and not frame.icv_good for frame in frames)
    assert max(s.seq for s in sent) < 2**32


def test_a_rejected_sa_record_gives_one_line_without_the_key(tmp_path: Path) -> None:
    _, entries = make_capture(tmp_path / "c.pcap", "gcm128")
    key_hex = entries[0].split(",")[5].strip('"')
    bad = entries[0].replace("16 octet ICV", "17 octet ICV")
    with pytest.raises(TsharkError, match="invalid value: AES-GCM with 17 octet ICV") as info:
        decrypt_esp(tmp_path / "c.pcap", [bad])
    assert key_hex not in str(info.value) and "\n" not in str(info.value)
