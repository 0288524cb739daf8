"""Userspace TCP coalescing for GSO writes: merged packets are valid, runs stop where they must."""

from __future__ import annotations

import struct

from scapy.layers.inet import IP, TCP, UDP

from ciphermesh.datapath.userspace.tcp_coalesce import PLAIN, VIRTIO_NET_HDR_GSO_TCPV4, coalesce

MSS = 1368
OPTIONS = [("NOP", None), ("NOP", None), ("Timestamp", (1000, 2000))]


def segment(
    seq: int, size: int = MSS, *, flags: str = "A", sport: int = 5201, ttl: int = 64, **kw: object
) -> bytes:
    payload = bytes((seq + i) % 251 for i in range(size))
    tcp = TCP(
        sport=sport,
        dport=40000,
        seq=seq,
        ack=777,
        flags=flags,
        window=501,
        options=kw.pop("options", OPTIONS),
    )
    return bytes(IP(src="10.0.0.1", dst="10.0.0.2", ttl=ttl, flags="DF", id=seq % 65536) / tcp / payload)


def merged(frame: tuple[bytes, ...]) -> tuple[tuple[int, ...], bytes]:
    header = struct.unpack("=BBHHHH", frame[0])
    return header, b"".join(frame[1:])


def checksums_valid(packet: bytes) -> bool:
    parsed = IP(packet)
    ip_ok = IP(bytes(parsed)).chksum == parsed.chksum
    recomputed = IP(packet)
    del recomputed.chksum
    del recomputed[TCP].chksum
    return ip_ok and IP(bytes(recomputed))[TCP].chksum == parsed[TCP].chksum


def test_a_run_becomes_one_gso_packet_with_valid_checksums() -> None:
    segments = [segment(1000 + i * MSS) for i in range(5)] + [segment(1000 + 5 * MSS, 100, flags="PA")]
    (frame,) = coalesce(segments)
    (flags, gso_type, hdr_len, gso_size, _, _), packet = merged(frame)
    assert (flags, gso_type, hdr_len, gso_size) == (0, VIRTIO_NET_HDR_GSO_TCPV4, 52, MSS)
    parsed = IP(packet)
    assert parsed.len == len(packet) == 52 + 5 * MSS + 100
    assert parsed[TCP].seq == 1000 and str(parsed[TCP].flags) == "PA"
    assert bytes(parsed[TCP].payload) == b"".join(s[52:] for s in segments)
    assert checksums_valid(packet)


def test_a_corrupted_segment_spoils_the_merged_checksum() -> None:
    segments = [segment(1000 + i * MSS) for i in range(3)]
    bad = bytearray(segments[1])
    bad[300] ^= 0xFF
    (frame,) = coalesce([segments[0], bytes(bad), segments[2]])
    assert not checksums_valid(merged(frame)[1])


def test_runs_break_on_gaps_flags_options_ttl_and_other_flows() -> None:
    base = [segment(1000), segment(1000 + MSS)]
    cases = {
        "gap": segment(1000 + 3 * MSS),
        "fin": segment(1000 + 2 * MSS, flags="FA"),
        "options": segment(
            1000 + 2 * MSS, options=[("NOP", None), ("NOP", None), ("Timestamp", (1001, 2000))]
        ),
        "ttl": segment(1000 + 2 * MSS, ttl=63),
        "longer": segment(1000 + 2 * MSS, MSS + 2),
    }
    for name, extra in cases.items():
        frames = coalesce([*base, extra])
        assert len(frames) == 2, name
        assert frames[1] == (PLAIN, extra), name
    # Another flow interleaved keeps both runs.
    other = [segment(5000, sport=9), segment(5000 + MSS, sport=9)]
    frames = coalesce([base[0], other[0], base[1], other[1]])
    assert len(frames) == 2 and all(merged(f)[0][1] == VIRTIO_NET_HDR_GSO_TCPV4 for f in frames)


def test_psh_or_a_short_segment_ends_a_run() -> None:
    run = [segment(1000), segment(1000 + MSS, 500), segment(1000 + MSS + 500)]
    assert len(coalesce(run)) == 2
    run = [segment(1000, flags="PA"), segment(1000 + MSS)]
    assert coalesce(run) == [(PLAIN, run[0]), (PLAIN, run[1])]


def test_other_packets_pass_through_in_order() -> None:
    udp = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / b"x")
    syn = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="S"))
    odd = segment(1000, 1367)
    v6 = bytes([0x60]) + bytes(59)
    packets = [udp, syn, odd, segment(1000 + 1367), v6]
    assert coalesce(packets) == [(PLAIN, p) for p in packets]


def test_a_flow_does_not_merge_across_its_own_unmergeable_packet() -> None:
    first, second = segment(1000), segment(1000 + MSS)
    ack_only = segment(1000 + MSS, 0)
    frames = coalesce([first, ack_only, second])
    assert frames == [(PLAIN, first), (PLAIN, ack_only), (PLAIN, second)]


def test_nothing_merges_across_an_unmergeable_packet_of_the_same_flow() -> None:
    first, second = segment(1000), segment(1000 + MSS)
    with_options = bytes(
        IP(src="10.0.0.1", dst="10.0.0.2", options=[b"\x01\x01\x01\x00"])
        / TCP(sport=5201, dport=40000, seq=9, flags="A")
        / b"xy"
    )
    fragment = bytes(IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / TCP(sport=5201, dport=40000) / b"xy")
    for between in (with_options, fragment):
        assert coalesce([first, between, second]) == [(PLAIN, first), (PLAIN, between), (PLAIN, second)]
