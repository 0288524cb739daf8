"""The pcap builder/parser: round trips, foreign files (strongSwan's, big-endian), bad input, tshark."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ciphermesh.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    PcapError,
    PcapRecord,
    build_pcap,
    ethernet_frame,
    parse_pcap,
    strip_ethernet,
)
from ciphermesh.tshark import read_fields, tshark_path
from tests.support.testdata import TESTDATA

STRONGSWAN_PCAP = TESTDATA / "strongswan_libipsec_esp_udp.pcap"

# 10.0.0.1 -> 10.0.0.2, UDP 1000 -> 2000, 4 bytes of payload, checksums valid.
IPV4_UDP = bytes.fromhex("4500002000000000401166cb0a0000010a00000203e807d0000c0000") + b"ping"
# ::1 -> ::2, no next header (59), empty payload.
IPV6_EMPTY = bytes.fromhex("6000000000003b40") + bytes(15) + b"\x01" + bytes(15) + b"\x02"

packets_strategy = st.lists(
    st.tuples(st.integers(0, 2**32 * 10**9 - 1), st.binary(max_size=300)), max_size=20
)


@given(packets_strategy, st.sampled_from([LINKTYPE_RAW, LINKTYPE_ETHERNET, 228]), st.booleans())
def test_round_trip_keeps_bytes_and_timestamps(
    packets: list[tuple[int, bytes]], linktype: int, nanosecond: bool
) -> None:
    parsed = parse_pcap(build_pcap(packets, linktype=linktype, nanosecond=nanosecond))
    resolution = 1 if nanosecond else 1000
    assert parsed.linktype == linktype
    assert parsed.nanosecond is nanosecond
    assert parsed.records == tuple(PcapRecord(ts - ts % resolution, data, len(data)) for ts, data in packets)


def test_layout_is_classic_little_endian_microsecond_pcap() -> None:
    data = build_pcap([(1_700_000_000_123_456_789, b"\x45abc")])
    assert data[:24] == struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 101)
    assert data[24:40] == struct.pack("<IIII", 1_700_000_000, 123_456, 4, 4)
    assert data[40:] == b"\x45abc"


def test_snaplen_truncates_and_keeps_original_length() -> None:
    record = parse_pcap(build_pcap([(0, bytes(100))], snaplen=60)).records[0]
    assert (len(record.data), record.orig_len) == (60, 100)


def test_big_endian_nanosecond_file_is_read() -> None:
    header = struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, LINKTYPE_RAW)
    record = struct.pack(">IIII", 5, 7, 3, 9) + b"xyz"
    parsed = parse_pcap(header + record)
    assert parsed.nanosecond
    assert parsed.records == (PcapRecord(5_000_000_007, b"xyz", 9),)


def test_strongswan_capture_parses() -> None:
    parsed = parse_pcap(STRONGSWAN_PCAP.read_bytes())
    assert parsed.linktype == LINKTYPE_ETHERNET
    assert len(parsed.records) == 6
    for record in parsed.records:
        packet = strip_ethernet(record.data)
        assert packet is not None
        assert packet[0] >> 4 == 4 and packet[9] == 17  # IPv4 carrying UDP (ESP-in-UDP)
        assert record.orig_len == len(record.data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than the 24-byte pcap header"),
        (b"\x0a\x0d\x0d\x0a" + bytes(40), "not a classic pcap file"),
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 1, 0, 0, 0, 65535, 1), "major version 1"),
        (build_pcap([(0, b"abcd")])[:-1], "claims 4 bytes, only 3 left"),
        (build_pcap([(0, b"abcd")]) + bytes(7), "truncated record header"),
    ],
)
def test_malformed_files_raise_one_line_error(data: bytes, message: str) -> None:
    with pytest.raises(PcapError, match=message) as info:
        parse_pcap(data)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("snaplen", "linktype", "packets", "message"),
    [
        (0, LINKTYPE_RAW, [], "snaplen"),
        (65535, -1, [], "link type"),
        (65535, LINKTYPE_RAW, [(-1, b"")], "negative"),
        (65535, LINKTYPE_RAW, [(2**32 * 10**9, b"")], "32-bit seconds"),
    ],
)
def test_unwritable_input_raises(
    snaplen: int, linktype: int, packets: list[tuple[int, bytes]], message: str
) -> None:
    with pytest.raises(PcapError, match=message):
        build_pcap(packets, snaplen=snaplen, linktype=linktype)


def test_ethernet_frame_picks_ethertype_and_strips_back() -> None:
    v4, v6 = ethernet_frame(IPV4_UDP), ethernet_frame(IPV6_EMPTY)
    assert v4[12:14] == b"\x08\x00" and v6[12:14] == b"\x86\xdd"
    assert strip_ethernet(v4) == IPV4_UDP and strip_ethernet(v6) == IPV6_EMPTY
    assert strip_ethernet(v4[:12] + b"\x08\x06" + v4[14:]) is None  # ARP
    assert strip_ethernet(b"short") is None
    with pytest.raises(PcapError, match="neither IPv4 nor IPv6"):
        ethernet_frame(b"\x10abc")
    with pytest.raises(PcapError, match="6 bytes"):
        ethernet_frame(IPV4_UDP, src_mac=b"\x00")


@pytest.mark.interop
@pytest.mark.skipif(tshark_path() is None, reason="tshark is not installed")
@pytest.mark.parametrize("linktype", [LINKTYPE_RAW, LINKTYPE_ETHERNET])
def test_tshark_reads_our_capture(tmp_path: Path, linktype: int) -> None:
    packets = [IPV4_UDP, IPV6_EMPTY]
    if linktype == LINKTYPE_ETHERNET:
        packets = [ethernet_frame(p) for p in packets]
    pcap = tmp_path / "ours.pcap"
    pcap.write_bytes(
        build_pcap(
            [(1_700_000_000_250_000_000, packets[0]), (1_700_000_001_000_001_000, packets[1])],
            linktype=linktype,
        )
    )
    fields = ["frame.time_epoch", "frame.len", "ip.src", "udp.dstport", "ipv6.dst", "data.data"]
    rows = read_fields(pcap, fields)
    assert [row["frame.len"] for row in rows] == [(str(len(p)),) for p in packets]
    times = [row["frame.time_epoch"][0][:20] for row in rows]
    assert times == ["1700000000.250000000", "1700000001.000001000"]
    assert rows[0]["ip.src"] == ("10.0.0.1",) and rows[0]["udp.dstport"] == ("2000",)
    assert rows[0]["data.data"] == (b"ping".hex(),)
    assert rows[1]["ipv6.dst"] == ("::2",)
