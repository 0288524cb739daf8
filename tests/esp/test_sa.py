"""Security associations: sequence numbers, IVs, padding, tunnel-mode checks, counters, SA lookup."""

from __future__ import annotations

import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

import pytest

from ciphermesh.esp import (
    AesGcmCipher,
    CbcHmacCipher,
    Counters,
    Decapsulated,
    Drop,
    InboundSA,
    InnerPacketError,
    Opened,
    OutboundSA,
    SADatabase,
    SequenceExhausted,
    cipher_for,
)
from ciphermesh.keys import parse_line
from tests.support.esp import TRANSFORMS, ipv4_packet, ipv6_packet, sa_pair

M32 = 2**32 - 1
M64 = 2**64 - 1
GCM_KEY = bytes(range(20))


def _seq_lo(packet: bytes) -> int:
    return int.from_bytes(packet[4:8], "big")


# --- sequence numbers and IVs ---------------------------------------------------------------


@pytest.mark.parametrize(("esn", "limit"), [(False, M32), (True, M64)])
def test_sequence_number_never_wraps(esn: bool, limit: int) -> None:
    outbound, inbound = sa_pair("gcm128", esn=esn, first_seq=limit - 1)
    inbound.replay.accept(limit - 2)
    first, last = outbound.encapsulate(ipv4_packet(b"a")), outbound.encapsulate(ipv4_packet(b"b"))
    assert [_seq_lo(first), _seq_lo(last)] == [M32 - 1, M32]
    assert outbound.seq == limit and outbound.exhausted
    with pytest.raises(SequenceExhausted, match="needs a new key"):
        outbound.encapsulate(ipv4_packet(b"c"))
    with pytest.raises(SequenceExhausted):
        outbound.seal(b"d", 59)
    assert outbound.seq == limit and outbound.counters[Drop.XfrmOutStateSeqError] == 2
    assert outbound.counters.packets_out == 2
    results = [inbound.decapsulate(first), inbound.decapsulate(last)]
    assert [r.seq for r in results if isinstance(r, Decapsulated)] == [limit - 1, limit]


def test_fresh_sa_is_not_exhausted_and_starts_at_one() -> None:
    outbound, _ = sa_pair("gcm128")
    assert outbound.seq == 0 and not outbound.exhausted
    assert _seq_lo(outbound.encapsulate(ipv4_packet(b""))) == 1


@pytest.mark.parametrize(("esn", "first_seq"), [(False, 0), (False, 2**32), (True, 0), (True, 2**64)])
def test_first_seq_must_be_a_usable_sequence_number(esn: bool, first_seq: int) -> None:
    with pytest.raises(ValueError, match="first_seq"):
        OutboundSA(3, AesGcmCipher(GCM_KEY), esn=esn, first_seq=first_seq)


def test_esn_crosses_2_to_the_32_on_both_sides() -> None:
    outbound, inbound = sa_pair("gcm128", esn=True, first_seq=2**32 - 3)
    inbound.replay.accept(2**32 - 4)
    packets = [outbound.encapsulate(ipv4_packet(bytes([i]))) for i in range(6)]
    assert [_seq_lo(p) for p in packets] == [M32 - 2, M32 - 1, M32, 0, 1, 2]
    results = [inbound.decapsulate(p) for p in packets]
    assert [r.seq for r in results if isinstance(r, Decapsulated)] == list(range(2**32 - 3, 2**32 + 3))


@pytest.mark.parametrize("transform", ["gcm128", "cbc-sha256"])
@pytest.mark.parametrize("sender_esn", [False, True])
def test_esn_mismatch_fails_the_icv(transform: str, sender_esn: bool) -> None:
    """ESN changes what the ICV covers (12-byte AAD, or seq_hi after the payload) even for high bits 0."""
    outbound, _ = sa_pair(transform, esn=sender_esn)
    _, inbound = sa_pair(transform, esn=not sender_esn)
    assert inbound.decapsulate(outbound.encapsulate(ipv4_packet(b"x"))) is Drop.XfrmInStateProtoError


def test_gcm_iv_is_the_sequence_number_xor_the_salt() -> None:
    salt = 0x0123456789ABCDEF
    outbound = OutboundSA(3, AesGcmCipher(GCM_KEY), iv_salt=salt, first_seq=2**40)
    ivs = [outbound.encapsulate(ipv4_packet(b""))[8:16] for _ in range(1000)]
    assert ivs == [((2**40 + i) ^ salt).to_bytes(8, "big") for i in range(1000)]
    assert len(set(ivs)) == 1000


@pytest.mark.parametrize("transform", ["cbc-sha256", "cbc-sha512"])
def test_cbc_ivs_come_from_the_random_source_and_differ(transform: str) -> None:
    outbound, inbound = sa_pair(transform)
    packets = [outbound.encapsulate(ipv4_packet(bytes(30))) for _ in range(1000)]
    ivs = {p[8:24] for p in packets}
    assert len(ivs) == 1000
    assert all(isinstance(inbound.decapsulate(p), Decapsulated) for p in packets)


def test_cbc_default_random_source_gives_distinct_ivs() -> None:
    outbound = OutboundSA(3, CbcHmacCipher(bytes(16), bytes(32), "sha256", 12))
    assert len({outbound.encapsulate(ipv4_packet(b""))[8:24] for _ in range(200)}) == 200


# --- padding and layout ---------------------------------------------------------------------


@pytest.mark.parametrize(("transform", "align"), [("gcm128", 4), ("cbc-sha256", 16)])
def test_padding_is_minimal_and_aligned(transform: str, align: int) -> None:
    outbound, _ = sa_pair(transform)
    cipher = TRANSFORMS[transform](bytes)
    for size in range(0, 40):
        packet = outbound.seal(bytes(size), 1)
        ciphertext_len = len(packet) - 8 - cipher.iv_len - cipher.icv_len
        assert ciphertext_len % align == 0
        assert ciphertext_len - size - 2 == (-(size + 2)) % align


def test_trailer_bytes_are_1_2_3_pad_length_next_header() -> None:
    outbound = OutboundSA(3, AesGcmCipher(GCM_KEY), esn=False)
    packet = outbound.seal(b"\xaa", 41)  # 1 + 2 -> 1 byte of padding to reach 4
    cipher = AesGcmCipher(GCM_KEY)
    plaintext = cipher.open(packet[:8], packet[8:16], packet[16:], b"")
    assert plaintext == b"\xaa\x01\x01\x29"


def _authentic(plaintext: bytes, seq: int = 1) -> tuple[bytes, InboundSA]:
    """A packet sealed directly with the cipher, so the trailer can be anything."""
    cipher = AesGcmCipher(GCM_KEY)
    header = struct.pack(">II", 3, seq)
    iv = seq.to_bytes(8, "big")
    packet = header + iv + cipher.seal(header, iv, plaintext, b"")
    return packet, InboundSA(3, AesGcmCipher(GCM_KEY), esn=False)


@pytest.mark.parametrize(
    "trailer",
    [b"\x01\x03\x03\x04", b"\x00\x00\x02\x04", b"\x02\x01\x02\x04", b"\xff\x04"],
    ids=["wrong-byte", "zeros", "swapped", "pad-longer-than-packet"],
)
def test_bad_padding_is_counted_after_the_window_moves(trailer: bytes) -> None:
    packet, inbound = _authentic(ipv4_packet(b"") + trailer)
    assert inbound.decapsulate(packet) is Drop.EspInBadPadding
    assert inbound.counters[Drop.EspInBadPadding] == 1
    assert inbound.max_seq == 1  # authentic, so it counts for replay
    assert inbound.decapsulate(packet) is Drop.XfrmInStateSeqError


@pytest.mark.parametrize(
    ("plaintext", "reason"),
    [
        (ipv4_packet(b"") + b"\x01\x02\x02\x29", Drop.XfrmInStateModeError),  # says IPv6, carries IPv4
        (ipv6_packet(b"") + b"\x01\x02\x02\x04", Drop.XfrmInStateModeError),  # says IPv4, carries IPv6
        (b"\x45" + bytes(9) + b"\x00\x04", Drop.XfrmInStateModeError),  # shorter than an IPv4 header
        (ipv4_packet(b"") + b"\x01\x02\x02\x01", Drop.XfrmInStateModeError),  # next header ICMP
        (b"\x00\x3b", Drop.EspInDummyPacket),  # RFC 4303 §2.6 dummy packet, next header 59
    ],
    ids=["nh41-v4", "nh4-v6", "short-v4", "nh1", "dummy"],
)
def test_tunnel_mode_checks(plaintext: bytes, reason: Drop) -> None:
    packet, inbound = _authentic(plaintext)
    assert inbound.decapsulate(packet) is reason
    assert inbound.counters[reason] == 1 and inbound.counters.packets_in == 0


def test_open_skips_tunnel_checks() -> None:
    packet, inbound = _authentic(b"hello" + b"\x01\x02\x03" + b"\x03\x01")
    assert inbound.open(packet) == Opened(b"hello", 1, 1)
    assert inbound.counters.packets_in == 1


def test_encapsulate_takes_ipv4_and_ipv6_only() -> None:
    outbound, inbound = sa_pair("gcm128")
    for inner in (b"", b"\x00" * 40, b"\x50" + bytes(40), b"\x45" + bytes(18), b"\x60" + bytes(38)):
        with pytest.raises(InnerPacketError):
            outbound.encapsulate(inner)
    assert outbound.counters[Drop.XfrmOutStateModeError] == 5 and outbound.seq == 0
    v4, v6 = ipv4_packet(b"four"), ipv6_packet(b"six")
    results = [inbound.decapsulate(outbound.encapsulate(p)) for p in (v4, v6)]
    assert results == [Decapsulated(v4, 1, 4), Decapsulated(v6, 2, 41)]


def test_seal_refuses_an_impossible_next_header() -> None:
    outbound, _ = sa_pair("gcm128")
    with pytest.raises(ValueError, match="next header"):
        outbound.seal(b"", 256)


# --- inbound drops ----------------------------------------------------------------------------


@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
def test_truncated_packets_are_header_errors(transform: str) -> None:
    outbound, inbound = sa_pair(transform)
    packet = outbound.encapsulate(ipv4_packet(b""))
    cipher = TRANSFORMS[transform](bytes)
    minimum = 8 + cipher.iv_len + max(cipher.block_size, 2) + cipher.icv_len
    for size in range(minimum):
        assert inbound.decapsulate(packet[:size]) is Drop.XfrmInHdrError
    assert inbound.counters[Drop.XfrmInHdrError] == minimum
    assert isinstance(inbound.decapsulate(packet), Decapsulated)


def test_wrong_spi_on_the_sa_itself_is_no_state() -> None:
    outbound, _ = sa_pair("gcm128", spi=4)
    _, inbound = sa_pair("gcm128", spi=3)
    assert inbound.decapsulate(outbound.encapsulate(ipv4_packet(b""))) is Drop.XfrmInNoStates


def test_expired_sa_drops_everything_but_keeps_its_counters() -> None:
    outbound, inbound = sa_pair("gcm128")
    assert isinstance(inbound.decapsulate(outbound.encapsulate(ipv4_packet(b""))), Decapsulated)
    inbound.expire()
    assert inbound.expired
    assert inbound.decapsulate(outbound.encapsulate(ipv4_packet(b""))) is Drop.XfrmInStateExpired
    assert inbound.counters.packets_in == 1 and inbound.counters[Drop.XfrmInStateExpired] == 1


@pytest.mark.parametrize("icv_bits", [64, 96, 128])
def test_truncated_gcm_tags(icv_bits: int) -> None:
    key = parse_line(f"3+ rfc4106(gcm(aes)) {bytes(range(20)).hex()} {icv_bits}")
    outbound = OutboundSA(3, cipher_for(key.material))
    inbound = InboundSA(3, cipher_for(key.material))
    packet = outbound.encapsulate(ipv4_packet(b"tag"))
    assert len(packet) == 8 + 8 + 28 + icv_bits // 8  # 23-byte inner + 3 padding + 2 = 28
    forged = packet[:-1] + bytes([packet[-1] ^ 1])
    assert inbound.decapsulate(forged) is Drop.XfrmInStateProtoError
    assert inbound.decapsulate(packet) == Decapsulated(ipv4_packet(b"tag"), 1, 4)


# --- cipher_for and the key lines ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kind", "icv_len"),
    [
        (f"3+ rfc4106(gcm(aes)) {'ab' * 20} 128", AesGcmCipher, 16),
        (f"3+ rfc4106(gcm(aes)) {'ab' * 36} 128", AesGcmCipher, 16),
        (f"3+ rfc4106(gcm(aes)) {'ab' * 28} 96", AesGcmCipher, 12),
        # The kernel's default truncation, which Cilium's key lines get: 12 bytes, not RFC 4868's 16.
        (f"3+ hmac(sha256) {'cd' * 16} cbc(aes) {'ef' * 16}", CbcHmacCipher, 12),
        (f"3+ hmac(sha256) {'cd' * 32} cbc(aes) {'ef' * 32}", CbcHmacCipher, 12),
        (f"3+ hmac(sha512) {'cd' * 64} cbc(aes) {'ef' * 24}", CbcHmacCipher, 32),
        (f"3+ hmac(sha1) {'cd' * 20} cbc(aes) {'ef' * 16}", CbcHmacCipher, 12),
    ],
)
def test_cipher_for_every_key_line_shape(line: str, kind: type, icv_len: int) -> None:
    material = parse_line(line).material
    cipher = cipher_for(material)
    assert isinstance(cipher, kind) and cipher.icv_len == icv_len
    outbound, inbound = OutboundSA(3, cipher), InboundSA(3, cipher_for(material))
    assert inbound.decapsulate(outbound.encapsulate(ipv4_packet(b"k"))) == Decapsulated(
        ipv4_packet(b"k"), 1, 4
    )
    assert "ab" * 4 not in repr(cipher) and "cd" * 4 not in repr(cipher) and "ef" * 4 not in repr(cipher)
    assert "abab" not in repr(outbound) + repr(inbound)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: AesGcmCipher(bytes(19)), "20, 28 or 36"),
        (lambda: AesGcmCipher(bytes(20), 32), "ICV must be 8, 12 or 16"),
        (lambda: CbcHmacCipher(bytes(15), bytes(32), "sha256", 16), "16, 24 or 32"),
        (lambda: CbcHmacCipher(bytes(16), bytes(32), "md5", 16), "unsupported HMAC hash"),
        (lambda: CbcHmacCipher(bytes(16), bytes(32), "sha256", 33), "ICV must be 12..32"),
    ],
)
def test_cipher_construction_errors_are_one_clear_line(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        make()
    assert "\n" not in str(raised.value)


# --- the SA database ---------------------------------------------------------------------------

NODE_A, NODE_B, NODE_C = IPv4Address("10.0.1.1"), IPv4Address("10.0.2.1"), IPv4Address("10.0.3.1")


def test_database_looks_up_by_source_destination_and_spi() -> None:
    database = SADatabase()
    out_ab, in_ab = sa_pair("gcm128", spi=3, seed=1)
    out_cb, in_cb = sa_pair("gcm128", spi=3, seed=2)
    out_ab4, in_ab4 = sa_pair("gcm128", spi=4, seed=3)
    database.add(NODE_A, NODE_B, in_ab)
    database.add(NODE_C, NODE_B, in_cb)
    database.add(NODE_A, NODE_B, in_ab4)
    assert len(database) == 3
    inner = ipv4_packet(b"db")
    assert database.decapsulate(NODE_A, NODE_B, out_ab.encapsulate(inner)) == Decapsulated(inner, 1, 4)
    assert database.decapsulate(NODE_C.packed, NODE_B.packed, out_cb.encapsulate(inner)) == Decapsulated(
        inner, 1, 4
    )
    assert database.decapsulate(NODE_A, NODE_B, out_ab4.encapsulate(inner)) == Decapsulated(inner, 1, 4)
    # The right SPI from the wrong source has no state; the wrong key from the right source fails the ICV.
    assert database.decapsulate(NODE_C, NODE_B, out_ab4.encapsulate(inner)) is Drop.XfrmInNoStates
    assert database.decapsulate(NODE_C, NODE_B, out_ab.encapsulate(inner)) is Drop.XfrmInStateProtoError
    assert database.decapsulate(NODE_A, NODE_B, b"\x00\x00\x00") is Drop.XfrmInHdrError
    assert database.counters[Drop.XfrmInNoStates] == 1 and database.counters[Drop.XfrmInHdrError] == 1
    totals = database.totals()
    assert totals.packets_in == 3 and totals.dropped == 3
    assert {(str(s), str(d), sa.spi) for s, d, sa in database.entries()} == {
        ("10.0.1.1", "10.0.2.1", 3),
        ("10.0.3.1", "10.0.2.1", 3),
        ("10.0.1.1", "10.0.2.1", 4),
    }


def test_database_add_replaces_and_remove_uninstalls() -> None:
    database = SADatabase()
    first, second = sa_pair("gcm128")[1], sa_pair("gcm128", seed=9)[1]
    database.add(NODE_A, NODE_B, first)
    database.add(NODE_A, NODE_B, second)
    assert len(database) == 1 and database.get(NODE_A, NODE_B, 3) is second
    assert database.remove(NODE_A, NODE_B, 3) is second
    assert database.remove(NODE_A, NODE_B, 3) is None and len(database) == 0
    assert database.get(NODE_A.packed, NODE_B.packed, 3) is None


def test_database_ipv6_and_mixed_families() -> None:
    database = SADatabase()
    a6, b6 = IPv6Address("fd00::1"), IPv6Address("fd00::2")
    outbound, inbound = sa_pair("cbc-sha256")
    database.add(a6, b6, inbound)
    inner = ipv6_packet(b"v6 outer")
    assert database.decapsulate(a6, b6, outbound.encapsulate(inner)) == Decapsulated(inner, 1, 41)
    with pytest.raises(ValueError, match="different IP versions"):
        database.add(NODE_A, b6, inbound)


# --- counters ------------------------------------------------------------------------------


def test_counters_have_every_name_and_add_up() -> None:
    counters = Counters()
    assert set(counters) == {str(reason) for reason in Drop} and counters.dropped == 0
    assert counters.count(Drop.XfrmInNoStates) is Drop.XfrmInNoStates
    counters.count(Drop.XfrmInNoStates)
    counters.packets_in, counters.bytes_out = 5, 700
    other = Counters()
    other.count(Drop.EspInBadPadding)
    total = Counters.total([counters, other])
    assert total["XfrmInNoStates"] == 2 and total["EspInBadPadding"] == 1 and total.dropped == 3
    assert total.as_dict() == {
        **{str(reason): 0 for reason in Drop},
        "XfrmInNoStates": 2,
        "EspInBadPadding": 1,
        "packets_in": 5,
        "bytes_in": 0,
        "packets_out": 0,
        "bytes_out": 700,
    }
    assert "XfrmInNoStates=2" in repr(total)


def test_drop_names_follow_linux_xfrm_counters() -> None:
    linux = {
        "XfrmInHdrError",
        "XfrmInNoStates",
        "XfrmInStateProtoError",
        "XfrmInStateSeqError",
        "XfrmInStateExpired",
        "XfrmInStateModeError",
        "XfrmOutStateSeqError",
        "XfrmOutStateModeError",
    }
    names = {str(reason) for reason in Drop}
    assert linux <= names
    assert all(name.startswith("EspIn") for name in names - linux)
    assert all(reason.name == reason.value for reason in Drop)


def test_byte_and_packet_totals() -> None:
    outbound, inbound = sa_pair("gcm128")
    packets = [outbound.encapsulate(ipv4_packet(bytes(n))) for n in (0, 10, 100)]
    for p in packets:
        inbound.decapsulate(p)
    assert outbound.counters.packets_out == 3 and outbound.counters.bytes_out == sum(map(len, packets))
    assert inbound.counters.packets_in == 3 and inbound.counters.bytes_in == sum(map(len, packets))


def test_counter_mode_cipher_needs_an_8_byte_iv() -> None:
    class WideIvGcm(AesGcmCipher):
        iv_len = 16

    with pytest.raises(ValueError, match="8-byte IV"):
        OutboundSA(3, WideIvGcm(GCM_KEY))
