"""The decoder against bytes laid out by hand from the kernel's structs (offsets from <linux/xfrm.h>).

The kernel's own state dumps cannot be had on this host (no ESP); they are checked in the VM tests.
"""

from __future__ import annotations

import errno
import struct
from ipaddress import IPv4Address, IPv6Address

import pytest

from ciphermesh.datapath.kernel.xfrm import requests as rq
from ciphermesh.datapath.kernel.xfrm.constants import NLM_F_MULTI, XFRM_STATE_ESN
from ciphermesh.datapath.kernel.xfrm.decode import decode
from ciphermesh.datapath.kernel.xfrm.errors import XfrmDecodeError
from ciphermesh.datapath.kernel.xfrm.messages import DoneMessage, ErrorMessage, OtherMessage, StateMessage
from ciphermesh.datapath.kernel.xfrm.model import Aead, Mark, Policy, Selector, State, StateCounters, prefix
from ciphermesh.keys.secret_bytes import SecretBytes

KEY = bytes.fromhex("a1b2c3d4e5f60718293a4b5c6d7e8f9011223344")


def header(length: int, kind: int, flags: int = 0, seq: int = 0, pid: int = 0) -> bytes:
    return struct.pack("=IHHII", length, kind, flags, seq, pid)


def rtattr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + bytes(-len(raw) % 4)


def kernel_state_dump() -> bytes:
    """A NEWSA dump part as the kernel builds it (copy_to_user_state, copy_to_user_state_extra), then DONE."""
    info = bytearray(224)
    struct.pack_into("=H", info, 40, 2)  # sel.family: the kernel gives a selector-less state its own
    info[56:60] = IPv4Address("10.56.1.238").packed  # id.daddr
    info[72:76] = (3).to_bytes(4, "big")  # id.spi
    info[76] = 50  # id.proto
    info[80:84] = IPv4Address("10.56.0.17").packed  # saddr
    struct.pack_into("=4Q", info, 96, *(2**64 - 1,) * 4)  # lft byte/packet limits
    struct.pack_into("=4Q", info, 160, 123456, 789, 1700000000, 1700000100)  # curlft
    struct.pack_into("=3I", info, 192, 1, 2, 4)  # stats: replay_window, replay, integrity_failed
    struct.pack_into(
        "=IIHBBB", info, 204, 0, 1, 2, 1, 0, XFRM_STATE_ESN
    )  # seq reqid family mode window flags
    attrs = rtattr(15, struct.pack("=Q", 1700000100))  # XFRMA_LASTUSED: not modelled, skipped
    attrs += rtattr(18, b"rfc4106(gcm(aes))".ljust(64, b"\0") + struct.pack("=II", 160, 128) + KEY)
    attrs += rtattr(21, struct.pack("=II", 0xCB93E00, 0xFFFFFF00))
    attrs += rtattr(29, struct.pack("=I", 0xE00)) + rtattr(30, struct.pack("=I", 0xFFFFFF00))
    # xfrm_replay_state_esn with its 32-word bitmap: oseq 5 + hi 1, seq 9 + hi 2, window 1024.
    attrs += rtattr(23, struct.pack("=6I", 32, 5, 9, 1, 2, 1024) + bytes(128))
    body = bytes(info) + attrs
    part = header(16 + len(body), 0x10, NLM_F_MULTI, 77, 4242) + body
    return part + header(20, 3, NLM_F_MULTI, 77, 4242) + struct.pack("=i", 0)


def test_a_kernel_state_dump_decodes_to_cilium_out_state_with_counters() -> None:
    part, done = decode(kernel_state_dump())
    assert isinstance(part, StateMessage) and isinstance(done, DoneMessage)
    assert part.header.flags & NLM_F_MULTI and done.errno == 0
    state = part.state
    assert state == State(
        IPv4Address("10.56.0.17"), IPv4Address("10.56.1.238"), 3, reqid=1,
        aead=Aead("rfc4106(gcm(aes))", SecretBytes(KEY), 128), flags=XFRM_STATE_ESN, replay_window=1024,
        mark=Mark(0xCB93E00, 0xFFFFFF00), output_mark=Mark(0xE00, 0xFFFFFF00),
    )  # fmt: skip
    # The kernel's match-all selector of the state's family is the same as none: held as None.
    assert state.selector is None
    assert state.counters == StateCounters(
        bytes=123456, packets=789, add_time=1700000000, use_time=1700000100, replay_window_drops=1, replay=2,
        integrity_failed=4, out_seq=(1 << 32) | 5, in_seq=(2 << 32) | 9,
    )  # fmt: skip
    assert state.aead is not None and state.aead.key.reveal() == KEY


def test_key_material_stays_out_of_reprs_and_errors() -> None:
    (part, _done) = decode(kernel_state_dump())
    assert isinstance(part, StateMessage)
    for text in (repr(part), str(part.state), repr(rq.new_state(part.state))):
        assert KEY.hex() not in text and "a1b2" not in text
    # The AEAD attribute claims a longer key than it carries: the error says so, without the bytes.
    data = bytearray(kernel_state_dump())
    offset = data.index(b"rfc4106") + 64
    struct.pack_into("=I", data, offset, 4096)
    with pytest.raises(XfrmDecodeError) as caught:
        decode(bytes(data))
    assert "AEAD" in str(caught.value) and KEY.hex() not in str(caught.value)


def test_acks_and_errors_name_their_request() -> None:
    request = header(300, 0x10, 5, 41, 0)
    ack = header(36, 2, 0x100, 41, 0) + struct.pack("=i", 0) + request
    reason = b"Requested AEAD algorithm not found\0"
    refusal = header(36 + len(rtattr(1, reason)), 2, 0x300, 42, 0) + struct.pack("=i", -38)
    refusal += header(300, 0x10, 5, 42, 0) + rtattr(1, reason)
    # Without NETLINK_CAP_ACK the request comes back whole before the extended-ack attributes.
    echoed_body = bytes(8)
    uncapped = header(16 + 4 + 24 + len(rtattr(1, b"x\0")), 2, 0x200, 43, 0) + struct.pack("=i", -17)
    uncapped += header(24, 0x13, 5, 43, 0) + echoed_body + rtattr(1, b"x\0")
    first, second, third = decode(ack + refusal + uncapped)
    assert isinstance(first, ErrorMessage) and first.ack and first.request.seq == 41
    assert isinstance(second, ErrorMessage) and second.errno == errno.ENOSYS and not second.ack
    assert second.reason == "Requested AEAD algorithm not found" and second.request.type == 0x10
    assert isinstance(third, ErrorMessage) and third.errno == errno.EEXIST and third.reason == "x"


def test_a_failed_dump_and_unknown_messages() -> None:
    done = header(20, 3, 2, 9) + struct.pack("=i", -errno.EINTR)
    expire = header(24, 0x18, 0, 0) + b"\x01" * 8
    (first, second) = decode(done + expire)
    assert isinstance(first, DoneMessage) and first.errno == errno.EINTR
    assert isinstance(second, OtherMessage) and "bytes" in repr(second) and "\\x01" not in repr(second)


def test_ipv6_state_selector_and_ports_in_network_order() -> None:
    side = prefix("fd00::1/64")
    selector = Selector(side, side, proto=17, sport=0x1234, sport_mask=0xFFFF)
    state = State(IPv6Address("fd00::1"), IPv6Address("fd00::2"), 0x01020304, selector=selector)
    raw = rq.new_state(state).encode(1)
    assert raw[16 + 36 : 16 + 38] == b"\x12\x34"  # sel.sport, big-endian
    assert raw[16 + 56 : 16 + 72] == IPv6Address("fd00::2").packed  # id.daddr
    assert raw[16 + 72 : 16 + 76] == b"\x01\x02\x03\x04"  # id.spi, big-endian
    assert raw[16 + 80 : 16 + 96] == IPv6Address("fd00::1").packed  # saddr
    assert struct.unpack_from("=H", raw, 16 + 212) == (10,)  # family, host order


def test_batches_align_each_message() -> None:
    batch = rq.encode_batch([rq.flush_states(), rq.flush_policies()], 5)
    assert struct.unpack_from("=I", batch, 0)[0] == 17  # nlmsg_len counts no padding, as ip sends
    assert struct.unpack_from("=IHHI", batch, 20) == (16, 0x1D, 5, 6)


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (header(10, 0x10), "claims 10 bytes"),
        (header(16, 0x10) + b"", "224 needed"),
        (header(40, 0x13) + bytes(24), "168 needed"),
        (b"\x10\x00\x00", "a header needs 16"),
        (header(16 + 168, 0x13) + bytes(168), "AF_UNSPEC"),
    ],
)
def test_malformed_input_names_what_is_wrong(data: bytes, where: str) -> None:
    with pytest.raises(XfrmDecodeError, match=where):
        decode(data)


def test_a_template_array_of_the_wrong_size_is_refused() -> None:
    policy = Policy(Selector(), 1)
    raw = bytearray(rq.new_policy(policy).encode(1)) + rtattr(5, bytes(63))
    struct.pack_into("=I", raw, 0, len(raw))
    with pytest.raises(XfrmDecodeError, match="multiple of 64"):
        decode(bytes(raw))


def test_values_that_do_not_fit_are_a_value_error_without_the_key() -> None:
    aead = Aead("rfc4106(gcm(aes))", SecretBytes(KEY), 128)
    with pytest.raises(ValueError, match="does not fit") as caught:
        rq.new_state(State(IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"), 3, reqid=2**32, aead=aead))
    assert KEY.hex() not in str(caught.value)
    with pytest.raises(ValueError, match="does not fit"):
        rq.new_policy(Policy(Selector(dport=70000), 1))
