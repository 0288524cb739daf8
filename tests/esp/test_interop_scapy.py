"""scapy's IPsec (an independent ESP implementation) and our cores decrypt each other, ESN on and off."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, IPSecIntegrityError, SecurityAssociation
from scapy.packet import Packet

from ciphermesh.esp.counters import Drop
from ciphermesh.esp.packet import parse_outer, wrap_ipv4, wrap_ipv6
from ciphermesh.esp.sa import Decapsulated, SADatabase
from tests.support.esp_interop import (
    NODE_A,
    NODE_A6,
    NODE_B,
    NODE_B6,
    IPAddress,
    inbound,
    inner_packets,
    outbound,
    scapy_sa,
    tunnel_key,
)

pytestmark = pytest.mark.interop

# scapy's AES-GCM always uses the full 16-byte tag, so the shorter GCM ICVs are left to tshark.
SCAPY_KEYS = ["gcm128", "gcm192", "gcm256", "cbc-sha256", "cbc-sha256-rfc4868", "cbc-sha512", "cbc-sha1"]
M32 = 0xFFFFFFFF
# Sequence numbers a receiver sees in order: the start, mid-range, and across 2^32 (ESN only).
RECEIVED_SEQS = {
    False: [1, 2, 3, 2**31, 2**32 - 2, 2**32 - 1],
    True: [1, 2, 2**31, 2**32 - 2, 2**32 - 1, 2**32, 2**32 + 1, 2**32 + 1000],
}


def _outer(version: int) -> tuple[IPAddress, IPAddress]:
    return (NODE_A, NODE_B) if version == 4 else (NODE_A6, NODE_B6)


def _parse(version: int, packet: bytes) -> Packet:
    return IP(packet) if version == 4 else IPv6(packet)


def _set_seq(sa: SecurityAssociation, seq: int) -> None:
    # scapy's encrypt/decrypt read `seq_num or self.seq_num` and `esn or self.esn`, so a low or high
    # half of 0 passed as an argument would be replaced: set them on the SA instead.
    sa.seq_num = seq & M32
    sa.esn = seq >> 32


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("esn", [False, True])
@pytest.mark.parametrize("name", SCAPY_KEYS)
@pytest.mark.parametrize("first_seq", [1, 2**32 - 2])
def test_scapy_decrypts_ours_and_reencrypts_identically(
    name: str, esn: bool, version: int, first_seq: int
) -> None:
    a, b = _outer(version)
    key = tunnel_key(name, a, b)
    ours = outbound(key, esn=esn, first_seq=first_seq)
    theirs = scapy_sa(key, a, b, esn=esn)
    wrap = wrap_ipv4 if version == 4 else wrap_ipv6
    iv_len = 8 if name.startswith("gcm") else 16
    inners = inner_packets(version)
    if not esn and first_seq > 1:
        inners = inners[:2]  # the last two 32-bit sequence numbers
    for inner in inners:
        esp = ours.encapsulate(bytes(inner))
        seq = ours.seq
        received = _parse(version, wrap(a.packed, b.packed, esp))
        assert received[ESP].spi == key.key_id and received[ESP].seq == seq & M32
        _set_seq(theirs, seq)
        assert bytes(theirs.decrypt(received.copy())) == bytes(inner)

        _set_seq(theirs, seq)
        again = theirs.encrypt(_parse(version, bytes(inner)), iv=esp[8 : 8 + iv_len])
        assert bytes(again[ESP]) == esp
    assert ours.seq == first_seq + len(inners) - 1


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("esn", [False, True])
@pytest.mark.parametrize("name", SCAPY_KEYS)
def test_we_decrypt_scapy(name: str, esn: bool, version: int) -> None:
    a, b = _outer(version)
    key = tunnel_key(name, b, a)
    theirs = scapy_sa(key, b, a, esn=esn)
    database = SADatabase()
    database.add(b, a, inbound(key, esn=esn))
    inners = inner_packets(version, reverse=True)
    for index, seq in enumerate(RECEIVED_SEQS[esn]):
        inner = inners[index % len(inners)]
        _set_seq(theirs, seq)
        outer = parse_outer(bytes(theirs.encrypt(inner)))
        assert outer is not None
        result = database.decapsulate(*outer)
        assert isinstance(result, Decapsulated), f"seq {seq}: {result}"
        assert (result.inner, result.seq) == (bytes(inner), seq)
        assert result.next_header == (4 if version == 4 else 41)
    assert database.totals().dropped == 0


@pytest.mark.parametrize("name", ["gcm128", "cbc-sha256"])
def test_esn_high_bits_are_authenticated(name: str) -> None:
    key = tunnel_key(name)
    ours = outbound(key, esn=True, first_seq=2**32 + 5)
    theirs = scapy_sa(key, NODE_A, NODE_B, esn=True)
    inner = inner_packets()[0]
    packet = IP(wrap_ipv4(NODE_A, NODE_B, ours.encapsulate(bytes(inner))))
    _set_seq(theirs, 5)  # the right low half with the wrong high half
    with pytest.raises(IPSecIntegrityError):
        theirs.decrypt(packet.copy())
    _set_seq(theirs, 2**32 + 5)
    assert bytes(theirs.decrypt(packet.copy())) == bytes(inner)


@pytest.mark.parametrize("name", ["gcm128", "cbc-sha256"])
def test_scapy_packets_under_another_key_are_counted_drops(name: str) -> None:
    theirs = scapy_sa(tunnel_key(name, NODE_B, NODE_A), NODE_A, NODE_B, esn=True)
    ours = inbound(tunnel_key(name, NODE_A, NODE_B), esn=True)
    outer = parse_outer(bytes(theirs.encrypt(inner_packets()[0])))
    assert outer is not None
    assert ours.decapsulate(outer[2]) is Drop.XfrmInStateProtoError
    assert ours.counters[Drop.XfrmInStateProtoError] == 1
    assert ours.max_seq == 0
