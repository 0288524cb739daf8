"""Userspace GRO for a TUN device opened with IFF_VNET_HDR: runs of TCP segments become one GSO write.

The kernel then takes a whole run up its stack as one packet (as NIC GRO would hand it over), which
saves a write and a pass through IP and TCP for every segment but the first. Only IPv4 TCP without IP
options is merged, and only segments that follow each other in sequence with identical headers apart
from the sequence number, the PSH flag on the last one, and the checksums.

The merged packet carries a complete TCP checksum, derived in O(1) per segment from the segments' own
checksums (one's-complement sums are linear), so the kernel still verifies every byte on local
delivery: a segment that arrived with a wrong checksum makes it drop the merged packet. (A merged
packet the kernel forwards and has to segment again gets fresh checksums, as after NIC GRO.)
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

VNET_HDR_LEN = 10
_VNET_HDR = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VIRTIO_NET_HDR_GSO_TCPV4 = 1
PLAIN = bytes(VNET_HDR_LEN)  # no offload: the packet is complete as it is
# A virtio-net header and the packet's pieces, as one writev() to the TUN device.
Frame = tuple[bytes, ...]
_ACK = 0x10
_ACK_PSH = 0x18
_PSH = 0x08
_MAX_IP_PACKET = 65535
_ONES = 0xFFFF


def _header_masks() -> dict[int, int]:
    """Per TCP header length: a mask over the header (as one big-endian int) that hides the sequence
    number, the PSH bit and the checksum, the only header bits segments of one run may differ in."""
    masks = {}
    for length in range(20, 64, 4):
        mask = (1 << (8 * length)) - 1
        for start, end in ((4, 8), (16, 18)):
            for byte in range(start, end):
                mask &= ~(0xFF << (8 * (length - 1 - byte)))
        mask &= ~(_PSH << (8 * (length - 1 - 13)))
        masks[length] = mask
    return masks


_MASKS = _header_masks()


class _Run:
    """Segments of one TCP flow, in sequence, waiting to be written as one packet."""

    __slots__ = (
        "closed",
        "count",
        "first",
        "gso_size",
        "header",
        "header_sums",
        "length",
        "next_seq",
        "odd_count",
        "odd_sums",
        "psh",
        "rest",
    )

    def __init__(self, first: bytes, header: int, tcp_len: int, payload_len: int, seq: int) -> None:
        self.first = first
        self.header = header & _MASKS[tcp_len]
        self.gso_size = payload_len
        self.rest: list[bytes] = []  # payloads of the segments after the first
        self.count = 1
        self.length = payload_len
        self.next_seq = (seq + payload_len) & 0xFFFFFFFF
        # The sum of (TCP header words, checksum included, + TCP length) over the segments whose payload
        # starts at an even offset of the merged payload (see frame()), and over those at an odd one
        # (every second segment when gso_size is odd, as with the IPsec pod MTU of 1393).
        self.header_sums = header + tcp_len + payload_len
        self.odd_count = 0
        self.odd_sums = 0
        self.psh = bool(first[33] & _PSH)
        self.closed = self.psh

    def frame(self) -> Frame:
        first = self.first
        if self.count == 1:
            return (PLAIN, first)
        header_len = 20 + ((first[32] >> 4) << 2)
        total = header_len + self.length
        ip = bytearray(first[:20])
        ip[2:4] = total.to_bytes(2, "big")
        ip[10:12] = b"\x00\x00"
        ip[10:12] = (-int.from_bytes(ip, "big") % _ONES).to_bytes(2, "big")
        tcp = bytearray(first[20:header_len])
        tcp[13] = _ACK_PSH if self.psh else _ACK
        tcp[16:18] = b"\x00\x00"
        # Each segment i was valid: A + L_i + H_i + P_i = 0 in one's complement, with A the pseudo
        # header's address and protocol words, L_i the TCP length, H_i the header words (checksum
        # included) and P_i the payload words. A payload at an even offset of the merged payload adds
        # P_i to its sum; one at an odd offset adds P_i with its bytes swapped, which modulo 0xFFFF is
        # 256 * P_i. So the merged payload sums to -(n_even*A + sum_even(L_i + H_i)) - 256 * (the same
        # over the odd ones).
        pseudo = int.from_bytes(first[12:20], "big") + 6
        odd = self.odd_count
        payload = -(self.count - odd) * pseudo - self.header_sums - 256 * (odd * pseudo + self.odd_sums)
        checksum = -(pseudo + total - 20 + int.from_bytes(tcp, "big") + payload) % _ONES
        tcp[16:18] = checksum.to_bytes(2, "big")
        vnet = _VNET_HDR.pack(0, VIRTIO_NET_HDR_GSO_TCPV4, header_len, self.gso_size, 0, 0)
        return (vnet, bytes(ip), bytes(tcp), first[header_len:], *self.rest)


def coalesce(packets: Iterable[bytes]) -> list[Frame]:
    """Frames for `packets` in order, mergeable TCP runs merged; write each with os.writev()."""
    out: list[Frame | _Run] = []
    runs: dict[bytes, _Run] = {}  # flow (addresses and ports) -> the run it may still extend
    masks = _MASKS
    for packet in packets:
        size = len(packet)
        # IPv4 without options, TCP, not a fragment.
        if size > 40 and packet[9] == 6 and packet[0] == 0x45 and not packet[6] & 0x3F and not packet[7]:
            flags = packet[33]
            tcp_len = (packet[32] >> 4) << 2
            payload_len = size - 20 - tcp_len
            if flags & ~_PSH == _ACK and payload_len > 0 and tcp_len >= 20:
                key = packet[12:24]
                run = runs.get(key)
                header = int.from_bytes(packet[20 : 20 + tcp_len], "big")
                seq = (header >> (8 * (tcp_len - 8))) & 0xFFFFFFFF
                if (
                    run is not None
                    and not run.closed
                    and seq == run.next_seq
                    and payload_len <= run.gso_size
                    and header & masks[tcp_len] == run.header
                    and packet[1] == run.first[1]  # TOS
                    and packet[8] == run.first[8]  # TTL
                    and not (packet[6] ^ run.first[6]) & 0xE0  # DF and reserved bits
                    and run.length + payload_len + 20 + tcp_len <= _MAX_IP_PACKET
                ):
                    run.rest.append(packet[20 + tcp_len :])
                    if run.length & 1:
                        run.odd_count += 1
                        run.odd_sums += header + tcp_len + payload_len
                    else:
                        run.header_sums += header + tcp_len + payload_len
                    run.count += 1
                    run.length += payload_len
                    run.next_seq = (seq + payload_len) & 0xFFFFFFFF
                    # PSH ends a run, and so does a short segment: only the last may be short.
                    run.psh = bool(flags & _PSH)
                    run.closed = run.psh or payload_len < run.gso_size
                    continue
                run = _Run(packet, header, tcp_len, payload_len, seq)
                runs[key] = run
                out.append(run)
                continue
            elif runs:
                runs.pop(packet[12:24], None)  # keep the flow in order: nothing merges across this
        elif runs and size >= 24 and packet[9] == 6 and packet[0] >> 4 == 4:
            header_len = (packet[0] & 0x0F) << 2
            runs.pop(packet[12:20] + packet[header_len : header_len + 4], None)
        out.append((PLAIN, packet))
    return [item.frame() if isinstance(item, _Run) else item for item in out]
