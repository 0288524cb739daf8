"""Outer IPv4/IPv6 headers for tunnel-mode ESP, checked against scapy's encoder and decoder."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from ciphermesh.esp import PROTO_ESP, parse_outer, wrap_ipv4, wrap_ipv6

SRC4, DST4 = IPv4Address("10.0.1.1"), IPv4Address("10.0.2.1")
SRC6, DST6 = IPv6Address("fd00:10:1::1"), IPv6Address("fd00:10:2::1")


@given(esp=st.binary(max_size=2000), ttl=st.integers(1, 255), ident=st.integers(0, 0xFFFF))
def test_ipv4_matches_scapy(esp: bytes, ttl: int, ident: int) -> None:
    ours = wrap_ipv4(SRC4, DST4, esp, ttl=ttl, ident=ident)
    theirs = bytes(IP(src=str(SRC4), dst=str(DST4), proto=PROTO_ESP, ttl=ttl, id=ident, flags=0) / Raw(esp))
    assert ours == theirs
    assert parse_outer(ours) == (SRC4.packed, DST4.packed, esp)


@given(esp=st.binary(max_size=2000), hop_limit=st.integers(0, 255), flow_label=st.integers(0, 0xFFFFF))
def test_ipv6_matches_scapy(esp: bytes, hop_limit: int, flow_label: int) -> None:
    ours = wrap_ipv6(SRC6, DST6, esp, hop_limit=hop_limit, flow_label=flow_label)
    theirs = bytes(IPv6(src=str(SRC6), dst=str(DST6), nh=PROTO_ESP, hlim=hop_limit, fl=flow_label) / Raw(esp))
    assert ours == theirs
    assert parse_outer(ours) == (SRC6.packed, DST6.packed, esp)


def test_packed_addresses_are_accepted() -> None:
    assert wrap_ipv4(SRC4.packed, DST4.packed, b"esp") == wrap_ipv4(SRC4, DST4, b"esp")
    assert wrap_ipv6(SRC6.packed, DST6.packed, b"esp") == wrap_ipv6(SRC6, DST6, b"esp")
    with pytest.raises(ValueError, match="IPv4"):
        wrap_ipv4(SRC6.packed, DST4, b"esp")


def test_link_layer_padding_is_cut_off() -> None:
    assert parse_outer(wrap_ipv4(SRC4, DST4, b"esp") + b"\0" * 20) == (SRC4.packed, DST4.packed, b"esp")
    assert parse_outer(wrap_ipv6(SRC6, DST6, b"esp") + b"\0" * 20) == (SRC6.packed, DST6.packed, b"esp")


def test_options_are_skipped() -> None:
    packet = bytes(
        IP(src=str(SRC4), dst=str(DST4), proto=PROTO_ESP, options=b"\x01\x01\x01\x00") / Raw(b"esp")
    )
    assert parse_outer(packet) == (SRC4.packed, DST4.packed, b"esp")


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x45" + bytes(18),
        bytes(IP(src=str(SRC4), dst=str(DST4), proto=17) / Raw(b"udp")),
        bytes(IP(src=str(SRC4), dst=str(DST4), proto=PROTO_ESP, flags="MF") / Raw(b"first fragment")),
        bytes(IP(src=str(SRC4), dst=str(DST4), proto=PROTO_ESP, frag=10) / Raw(b"later fragment")),
        bytes(IP(src=str(SRC4), dst=str(DST4), proto=PROTO_ESP) / Raw(b"esp"))[
            :-1
        ],  # shorter than its length
        bytes(IP(src=str(SRC4), dst=str(DST4), proto=PROTO_ESP, ihl=4) / Raw(b"esp")),
        bytes(IPv6(src=str(SRC6), dst=str(DST6), nh=17) / Raw(b"udp")),
        bytes(IPv6(src=str(SRC6), dst=str(DST6), nh=PROTO_ESP) / Raw(b"esp"))[:-1],
        bytes(IPv6(src=str(SRC6), dst=str(DST6), nh=PROTO_ESP) / Raw(b"esp"))[:39],
        b"\x20" + bytes(40),
    ],
    ids=[
        "empty",
        "short",
        "udp",
        "mf",
        "offset",
        "truncated",
        "ihl4",
        "v6-udp",
        "v6-truncated",
        "v6-short",
        "v2",
    ],
)
def test_not_an_esp_packet(packet: bytes) -> None:
    assert parse_outer(packet) is None


@given(st.binary(max_size=200))
def test_parse_outer_never_raises(packet: bytes) -> None:
    result = parse_outer(packet)
    assert result is None or len(result[0]) in (4, 16)


def test_too_large_to_wrap() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        wrap_ipv4(SRC4, DST4, bytes(65536 - 20))
    with pytest.raises(ValueError, match="jumbogram"):
        wrap_ipv6(SRC6, DST6, bytes(65536))
