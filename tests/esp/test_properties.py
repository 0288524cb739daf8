"""Properties: every payload round-trips; every single-bit change of a packet is refused and counted."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ciphermesh.esp import Decapsulated, Drop, Opened
from tests.support.esp import ipv4_packet, ipv6_packet, sa_pair

ROUND_TRIP = ["gcm128", "gcm256", "cbc-sha256", "cbc-sha512"]
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# Sizes spread evenly over 0..n (plain st.binary() rarely goes past a few hundred bytes).
def sized_binary(max_size: int) -> st.SearchStrategy[bytes]:
    return st.integers(0, max_size).flatmap(lambda n: st.binary(min_size=n, max_size=n))


@pytest.mark.parametrize("esn", [False, True], ids=["no-esn", "esn"])
@pytest.mark.parametrize("transform", ROUND_TRIP)
@PROPERTY_SETTINGS
@given(payload=sized_binary(9000), next_header=st.integers(0, 255), first_seq=st.integers(1, 2**64 - 2))
def test_seal_open_round_trip(
    transform: str, esn: bool, payload: bytes, next_header: int, first_seq: int
) -> None:
    if not esn:
        first_seq = first_seq % (2**32 - 2) + 1
    outbound, inbound = sa_pair(transform, esn=esn, first_seq=first_seq)
    inbound.replay.accept(first_seq - 1)
    packets = [outbound.seal(payload, next_header), outbound.seal(payload[::-1], next_header)]
    assert packets[0] != packets[1] or not payload
    assert [inbound.open(p) for p in packets] == [
        Opened(payload, first_seq, next_header),
        Opened(payload[::-1], first_seq + 1, next_header),
    ]


@pytest.mark.parametrize("esn", [False, True], ids=["no-esn", "esn"])
@pytest.mark.parametrize("transform", ROUND_TRIP)
@PROPERTY_SETTINGS
@given(body=sized_binary(9000 - 40), version=st.sampled_from([4, 6]))
def test_tunnel_round_trip(transform: str, esn: bool, body: bytes, version: int) -> None:
    outbound, inbound = sa_pair(transform, esn=esn)
    inner = ipv4_packet(body) if version == 4 else ipv6_packet(body)
    assert inbound.decapsulate(outbound.encapsulate(inner)) == Decapsulated(
        inner, 1, 4 if version == 4 else 41
    )
    assert inbound.counters.dropped == 0


def test_payload_sizes_at_the_edges() -> None:
    for transform in ROUND_TRIP:
        for esn in (False, True):
            outbound, inbound = sa_pair(transform, esn=esn)
            for size in (0, 1, 2, 3, 13, 14, 15, 16, 17, 1400, 8999, 9000):
                payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
                result = inbound.open(outbound.seal(payload, 41))
                assert isinstance(result, Opened) and result.payload == payload, (transform, esn, size)


FLIP = ["gcm128", "gcm128-icv8", "cbc-sha256", "cbc-sha1"]


@pytest.mark.parametrize("esn", [False, True], ids=["no-esn", "esn"])
@pytest.mark.parametrize("transform", FLIP)
@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=300), data=st.data())
def test_any_single_bit_flip_is_refused(transform: str, esn: bool, body: bytes, data: st.DataObject) -> None:
    outbound, inbound = sa_pair(transform, esn=esn)
    packet = outbound.encapsulate(ipv4_packet(body))
    bit = data.draw(st.integers(0, len(packet) * 8 - 1), label="bit")
    flipped = bytearray(packet)
    flipped[bit // 8] ^= 0x80 >> (bit % 8)
    result = inbound.decapsulate(bytes(flipped))
    assert isinstance(result, Drop)
    # SPI bits give "no state", sequence bits a replay or ICV failure, everything else the ICV.
    expected = {Drop.XfrmInNoStates} if bit < 32 else {Drop.XfrmInStateProtoError}
    if 32 <= bit < 64:
        expected.add(Drop.XfrmInStateSeqError)
    assert result in expected
    assert (
        inbound.counters.dropped == 1 and inbound.counters[result] == 1 and inbound.counters.packets_in == 0
    )
    # The forgery left the window where it was: the genuine packet still goes through.
    assert inbound.decapsulate(packet) == Decapsulated(ipv4_packet(body), 1, 4)


@pytest.mark.parametrize("esn", [False, True], ids=["no-esn", "esn"])
@pytest.mark.parametrize("transform", FLIP)
@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=200))
def test_arbitrary_bytes_are_dropped_not_raised(transform: str, esn: bool, garbage: bytes) -> None:
    _, inbound = sa_pair(transform, esn=esn)
    assert isinstance(inbound.decapsulate(garbage), Drop)
    assert isinstance(inbound.open(garbage), Drop)
    assert inbound.counters.dropped == 2
