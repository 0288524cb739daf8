"""Real traffic: strongSwan 5.9.8 kernel-libipsec ESP-in-UDP capture, decapsulated with the logged keys."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address
from typing import Any, NamedTuple

import pytest

from ciphermesh.esp import AesGcmCipher, Decapsulated, Drop, InboundSA, SADatabase
from tests.support.testdata import TESTDATA, h, load

CAPTURE = load("strongswan_libipsec_esp_udp.json")
PCAP_MAGIC_LE = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
ETHERTYPE_IPV4 = 0x0800
IPPROTO_UDP = 17
NAT_T_PORT = 4500


class EspInUdp(NamedTuple):
    src: IPv4Address
    dst: IPv4Address
    esp: bytes


def _frames(pcap: bytes) -> list[bytes]:
    """Classic little-endian pcap: 24-byte global header, then 16-byte record headers."""
    magic, _major, _minor, _zone, _sigfigs, _snaplen, linktype = struct.unpack_from("<IHHiIII", pcap)
    assert magic == PCAP_MAGIC_LE and linktype == LINKTYPE_ETHERNET
    frames, offset = [], 24
    while offset < len(pcap):
        _sec, _usec, incl_len, _orig_len = struct.unpack_from("<IIII", pcap, offset)
        offset += 16
        frames.append(pcap[offset : offset + incl_len])
        offset += incl_len
    assert offset == len(pcap)
    return frames


def _esp_in_udp(frame: bytes) -> EspInUdp:
    """Ethernet / IPv4 / UDP 4500 / ESP (RFC 3948: no non-ESP marker, so not IKE)."""
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    assert ethertype == ETHERTYPE_IPV4
    ip = frame[14:]
    header_len = (ip[0] & 0x0F) * 4
    (total_len,) = struct.unpack_from("!H", ip, 2)
    assert ip[0] >> 4 == 4 and ip[9] == IPPROTO_UDP
    udp = ip[header_len:total_len]
    sport, dport, udp_len, _checksum = struct.unpack_from("!HHHH", udp)
    assert (sport, dport) == (NAT_T_PORT, NAT_T_PORT) and udp_len == len(udp)
    esp = udp[8:]
    assert esp[:4] != bytes(4), "a non-ESP marker: this is IKE, not ESP"
    return EspInUdp(IPv4Address(ip[12:16]), IPv4Address(ip[16:20]), esp)


PACKETS = [
    _esp_in_udp(frame) for frame in _frames((TESTDATA / "strongswan_libipsec_esp_udp.pcap").read_bytes())
]
INITIATOR = IPv4Address(CAPTURE["outer"]["initiator"])
RESPONDER = IPv4Address(CAPTURE["outer"]["responder"])
INNER_INITIATOR = IPv4Address(CAPTURE["inner"]["initiator"])
INNER_RESPONDER = IPv4Address(CAPTURE["inner"]["responder"])


def _database() -> SADatabase:
    database = SADatabase()
    for sa in CAPTURE["sas"]:
        src, dst = (
            (INITIATOR, RESPONDER) if sa["direction"] == "initiator->responder" else (RESPONDER, INITIATOR)
        )
        # strongSwan negotiated 32-bit sequence numbers for this CHILD_SA.
        inbound = InboundSA(int(sa["spi"], 16), AesGcmCipher(h(sa["key20_hex"])), esn=False)
        database.add(src, dst, inbound)
    return database


def _icmp(inner: bytes) -> dict[str, Any]:
    header_len = (inner[0] & 0x0F) * 4
    icmp = inner[header_len:]
    icmp_type, _code, _checksum, ident, seq = struct.unpack_from("!BBHHH", icmp)
    return {
        "src": IPv4Address(inner[12:16]),
        "dst": IPv4Address(inner[16:20]),
        "proto": inner[9],
        "type": icmp_type,
        "ident": ident,
        "seq": seq,
        "checksum_ok": _ones_complement_sum(icmp) == 0xFFFF,
    }


def _ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_capture_has_six_esp_packets_three_per_direction() -> None:
    assert len(PACKETS) == 6
    assert sum(p.src == INITIATOR for p in PACKETS) == 3 and sum(p.src == RESPONDER for p in PACKETS) == 3


def test_all_six_packets_decapsulate_to_icmp_echo() -> None:
    database = _database()
    results = [database.decapsulate(p.src, p.dst, p.esp) for p in PACKETS]
    assert all(isinstance(r, Decapsulated) for r in results), results
    decapsulated = [r for r in results if isinstance(r, Decapsulated)]
    assert [r.next_header for r in decapsulated] == [4] * 6

    requests = [_icmp(r.inner) for p, r in zip(PACKETS, decapsulated, strict=True) if p.src == INITIATOR]
    replies = [_icmp(r.inner) for p, r in zip(PACKETS, decapsulated, strict=True) if p.src == RESPONDER]
    assert all(
        m["src"] == INNER_INITIATOR and m["dst"] == INNER_RESPONDER and m["proto"] == 1 and m["type"] == 8
        for m in requests
    )
    assert all(
        m["src"] == INNER_RESPONDER and m["dst"] == INNER_INITIATOR and m["proto"] == 1 and m["type"] == 0
        for m in replies
    )
    assert all(m["checksum_ok"] for m in requests + replies)
    # Each reply answers the request with the same identifier and sequence number.
    assert [(m["ident"], m["seq"]) for m in requests] == [(m["ident"], m["seq"]) for m in replies]
    assert sorted({r.seq for r in decapsulated}) == [1, 2, 3]

    totals = database.totals()
    assert totals.packets_in == 6 and totals.dropped == 0
    assert totals.bytes_in == sum(len(p.esp) for p in PACKETS)


def test_replaying_the_capture_is_refused() -> None:
    database = _database()
    for p in PACKETS:
        database.decapsulate(p.src, p.dst, p.esp)
    assert [database.decapsulate(p.src, p.dst, p.esp) for p in PACKETS] == [Drop.XfrmInStateSeqError] * 6
    assert database.totals()[Drop.XfrmInStateSeqError] == 6


@pytest.mark.parametrize("swap", ["addresses", "key"])
def test_wrong_direction_or_key_is_dropped(swap: str) -> None:
    database = SADatabase()
    first = CAPTURE["sas"][0]
    other = CAPTURE["sas"][1]
    key = other["key20_hex"] if swap == "key" else first["key20_hex"]
    src, dst = (RESPONDER, INITIATOR) if swap == "addresses" else (INITIATOR, RESPONDER)
    database.add(src, dst, InboundSA(int(first["spi"], 16), AesGcmCipher(h(key)), esn=False))
    packet = next(p for p in PACKETS if p.src == INITIATOR)
    expected = Drop.XfrmInNoStates if swap == "addresses" else Drop.XfrmInStateProtoError
    assert database.decapsulate(packet.src, packet.dst, packet.esp) is expected
    assert database.totals()[expected] == 1
