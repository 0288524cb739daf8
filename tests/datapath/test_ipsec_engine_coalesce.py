"""TCP coalescing at the IPsec pod MTU: odd segment sizes merge into packets with valid checksums."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP

from ciphermesh.datapath.mtu import plan_mtus
from ciphermesh.datapath.userspace.tcp_coalesce import VIRTIO_NET_HDR_GSO_TCPV4, coalesce

OPTIONS = [("NOP", None), ("NOP", None), ("Timestamp", (1000, 2000))]
# The MSS a pod gets in IPsec mode (MTU 1393 less IPv4, TCP and timestamps): odd.
MSS = plan_mtus("ipsec").pod - 20 - 32


def segment(seq: int, size: int = MSS, *, flags: str = "A", fill: int = 0) -> bytes:
    payload = bytes((seq + fill + i * 7) % 256 for i in range(size))
    tcp = TCP(sport=5201, dport=40000, seq=seq, ack=777, flags=flags, window=501, options=OPTIONS)
    return bytes(IP(src="10.0.1.5", dst="10.0.2.5", flags="DF", id=seq % 65536) / tcp / payload)


def checksums_valid(packet: bytes) -> bool:
    parsed = IP(packet)
    recomputed = IP(packet)
    del recomputed.chksum
    del recomputed[TCP].chksum
    again = IP(bytes(recomputed))
    return bool(again.chksum == parsed.chksum and again[TCP].chksum == parsed[TCP].chksum)


def test_the_ipsec_pod_mss_is_odd_so_the_odd_offset_path_is_the_one_in_use() -> None:
    assert MSS % 2 == 1


def test_odd_sized_segments_merge_into_one_gso_packet_with_valid_checksums() -> None:
    segments = [segment(5000 + i * MSS) for i in range(6)] + [segment(5000 + 6 * MSS, 101, flags="PA")]
    (frame,) = coalesce(segments)
    flags, gso_type, hdr_len, gso_size, _, _ = struct.unpack("=BBHHHH", frame[0])
    assert (flags, gso_type, hdr_len, gso_size) == (0, VIRTIO_NET_HDR_GSO_TCPV4, 52, MSS)
    packet = b"".join(frame[1:])
    assert bytes(IP(packet)[TCP].payload) == b"".join(s[52:] for s in segments)
    assert checksums_valid(packet)


def test_a_corrupted_odd_offset_segment_spoils_the_merged_checksum() -> None:
    segments = [segment(5000 + i * MSS) for i in range(3)]
    bad = bytearray(segments[1])
    bad[400] ^= 0x5A
    (frame,) = coalesce([segments[0], bytes(bad), segments[2]])
    assert not checksums_valid(b"".join(frame[1:]))


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=1460),
    count=st.integers(min_value=2, max_value=12),
    last=st.integers(min_value=1, max_value=1460),
    fill=st.integers(min_value=0, max_value=255),
)
def test_any_segment_size_merges_with_a_valid_checksum(size: int, count: int, last: int, fill: int) -> None:
    last = min(last, size)
    seqs = [0xFFFFF000 + i * size for i in range(count)]
    segments = [segment(seq & 0xFFFFFFFF, size, fill=fill) for seq in seqs[:-1]]
    segments.append(segment(seqs[-1] & 0xFFFFFFFF, last, flags="PA", fill=fill))
    (frame,) = coalesce(segments)
    packet = b"".join(frame[1:])
    assert len(packet) == 52 + (count - 1) * size + last
    assert bytes(IP(packet)[TCP].payload) == b"".join(s[52:] for s in segments)
    assert checksums_valid(packet)
