"""Decode a netlink receive buffer from NETLINK_XFRM into typed messages; bad bytes raise XfrmDecodeError."""

from __future__ import annotations

import errno as errno_names
import struct

from ciphermesh.datapath.kernel.xfrm import attributes as nla
from ciphermesh.datapath.kernel.xfrm.constants import (
    NLM_F_ACK_TLVS,
    NLM_F_CAPPED,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGERR_ATTR_MSG,
    POLICY_MESSAGES,
    STATE_MESSAGES,
    XFRMA_ALG_AEAD,
    XFRMA_ALG_AUTH_TRUNC,
    XFRMA_ALG_CRYPT,
    XFRMA_MARK,
    XFRMA_REPLAY_ESN_VAL,
    XFRMA_REPLAY_VAL,
    XFRMA_SET_MARK,
    XFRMA_SET_MARK_MASK,
    XFRMA_TMPL,
)
from ciphermesh.datapath.kernel.xfrm.errors import XfrmDecodeError
from ciphermesh.datapath.kernel.xfrm.messages import (
    NLMSG_HEADER,
    DoneMessage,
    ErrorMessage,
    Header,
    Message,
    OtherMessage,
    PolicyMessage,
    StateMessage,
)
from ciphermesh.datapath.kernel.xfrm.model import (
    Aead,
    AuthTrunc,
    Cipher,
    Mark,
    Policy,
    State,
    StateCounters,
    Template,
)
from ciphermesh.datapath.kernel.xfrm.structs import (
    ALGO,
    ALGO_AEAD,
    ALGO_AUTH,
    REPLAY,
    REPLAY_ESN,
    SELECTOR,
    USERPOLICY_INFO_SIZE,
    USERPOLICY_INFO_TAIL,
    USERSA_INFO_SIZE,
    USERSA_INFO_TAIL,
    algorithm_name,
    need,
    unpack_address,
    unpack_mark,
    unpack_selector,
    unpack_templates,
)
from ciphermesh.keys.secret_bytes import SecretBytes

_ERROR_CODE = struct.Struct("=i")


def decode(buffer: bytes | bytearray | memoryview) -> list[Message]:
    """Every message in the buffer, in order (a dump's parts, acks, errors, NLMSG_DONE)."""
    view = memoryview(buffer)
    messages: list[Message] = []
    offset = 0
    while offset < len(view):
        if len(view) - offset < NLMSG_HEADER.size:
            left = len(view) - offset
            raise XfrmDecodeError(f"message at offset {offset}: {left} bytes, a header needs 16")
        header = Header(*NLMSG_HEADER.unpack_from(view, offset))
        if header.length < NLMSG_HEADER.size or offset + header.length > len(view):
            raise XfrmDecodeError(
                f"message at offset {offset} (type {header.type:#x}, seq {header.seq}) claims "
                f"{header.length} bytes, {len(view) - offset} left"
            )
        payload = view[offset + NLMSG_HEADER.size : offset + header.length]
        messages.append(decode_message(header, payload))
        offset += nla.align(header.length)
    return messages


def decode_message(header: Header, payload: memoryview) -> Message:
    """One message from its header and payload."""
    what = f"message type {header.type:#x} seq {header.seq}"
    if header.type == NLMSG_ERROR:
        return _error(header, payload, what)
    if header.type == NLMSG_DONE:
        code = _ERROR_CODE.unpack_from(payload)[0] if len(payload) >= _ERROR_CODE.size else 0
        return DoneMessage(header, abs(code))
    if header.type in STATE_MESSAGES:
        return StateMessage(header, decode_state(payload, what))
    if header.type in POLICY_MESSAGES:
        return PolicyMessage(header, decode_policy(payload, what))
    return OtherMessage(header, bytes(payload))


def _error(header: Header, payload: memoryview, what: str) -> ErrorMessage:
    need(payload, _ERROR_CODE.size + NLMSG_HEADER.size, what)
    code = _ERROR_CODE.unpack_from(payload)[0]
    if code > 0:
        raise XfrmDecodeError(f"{what}: error code {code} is positive")
    request = Header(*NLMSG_HEADER.unpack_from(payload, _ERROR_CODE.size))
    reason = None
    if header.flags & NLM_F_ACK_TLVS:
        echoed = NLMSG_HEADER.size if header.flags & NLM_F_CAPPED else request.length
        start = _ERROR_CODE.size + nla.align(echoed)
        if start > len(payload):
            raise XfrmDecodeError(f"{what}: the echoed request runs past the message")
        for kind, value in nla.iterate(payload[start:], f"{what} extended ack"):
            if kind == NLMSGERR_ATTR_MSG:
                reason = bytes(value).partition(b"\0")[0].decode("utf-8", "replace")
    return ErrorMessage(header, -code, request, reason)


def errno_name(code: int) -> str:
    return errno_names.errorcode.get(code, str(code))


def _key(payload: memoryview, start: int, bits: int, what: str) -> SecretBytes:
    if bits % 8:
        raise XfrmDecodeError(f"{what}: a key of {bits} bits is not whole bytes")
    # The length check says how long the key should be, never what it holds.
    need(payload, start + bits // 8, what)
    return SecretBytes(bytes(payload[start : start + bits // 8]))


def _aead(payload: memoryview, what: str) -> Aead:
    need(payload, ALGO_AEAD.size, what)
    name, key_bits, icv_bits = ALGO_AEAD.unpack_from(payload)
    return Aead(algorithm_name(name, what), _key(payload, ALGO_AEAD.size, key_bits, what), icv_bits)


def _cipher(payload: memoryview, what: str) -> Cipher:
    need(payload, ALGO.size, what)
    name, key_bits = ALGO.unpack_from(payload)
    return Cipher(algorithm_name(name, what), _key(payload, ALGO.size, key_bits, what))


def _auth(payload: memoryview, what: str) -> AuthTrunc:
    need(payload, ALGO_AUTH.size, what)
    name, key_bits, trunc_bits = ALGO_AUTH.unpack_from(payload)
    return AuthTrunc(algorithm_name(name, what), _key(payload, ALGO_AUTH.size, key_bits, what), trunc_bits)


def _one(attrs: dict[int, list[memoryview]], kind: int) -> memoryview | None:
    found = attrs.get(kind)
    return found[-1] if found else None


def decode_state(payload: memoryview, what: str) -> State:
    """xfrm_usersa_info and its attributes."""
    need(payload, USERSA_INFO_SIZE, what)
    selector = unpack_selector(payload, what)
    fields = USERSA_INFO_TAIL.unpack_from(payload, SELECTOR.size)
    daddr, spi, proto, saddr = fields[:4]
    nbytes, packets, add_time, use_time, window_drops, replay, integrity = fields[12:19]
    reqid, family, mode, replay_window, flags = fields[20:]
    attrs = nla.collect(payload[USERSA_INFO_SIZE:], what)
    out_seq = in_seq = 0
    if (esn := _one(attrs, XFRMA_REPLAY_ESN_VAL)) is not None:
        need(esn, REPLAY_ESN.size, f"{what} ESN replay state")
        _words, oseq, seq, oseq_hi, seq_hi, replay_window = REPLAY_ESN.unpack_from(esn)
        out_seq, in_seq = oseq_hi << 32 | oseq, seq_hi << 32 | seq
    elif (legacy := _one(attrs, XFRMA_REPLAY_VAL)) is not None:
        need(legacy, REPLAY.size, f"{what} replay state")
        out_seq, in_seq, _bitmap = REPLAY.unpack_from(legacy)
    mark = _one(attrs, XFRMA_MARK)
    output_mark = _one(attrs, XFRMA_SET_MARK)
    output_mask = _one(attrs, XFRMA_SET_MARK_MASK)
    aead, crypt, auth = (_one(attrs, k) for k in (XFRMA_ALG_AEAD, XFRMA_ALG_CRYPT, XFRMA_ALG_AUTH_TRUNC))
    src, dst = unpack_address(saddr, family, what), unpack_address(daddr, family, what)
    try:
        return State(
            src=src,
            dst=dst,
            spi=int.from_bytes(spi, "big"),
            proto=proto,
            mode=mode,
            reqid=reqid,
            aead=None if aead is None else _aead(aead, f"{what} AEAD"),
            crypt=None if crypt is None else _cipher(crypt, f"{what} cipher"),
            auth=None if auth is None else _auth(auth, f"{what} authentication"),
            flags=flags,
            replay_window=replay_window,
            mark=None if mark is None else unpack_mark(mark, f"{what} mark"),
            output_mark=None if output_mark is None else _output_mark(output_mark, output_mask, what),
            selector=selector,
            counters=StateCounters(
                bytes=nbytes,
                packets=packets,
                add_time=add_time,
                use_time=use_time,
                replay_window_drops=window_drops,
                replay=replay,
                integrity_failed=integrity,
                out_seq=out_seq,
                in_seq=in_seq,
            ),
        )
    except ValueError as exc:
        raise XfrmDecodeError(f"{what}: {exc}") from None


def _output_mark(value: memoryview, mask: memoryview | None, what: str) -> Mark:
    # Without XFRMA_SET_MARK_MASK the kernel takes the whole mark.
    full = 0xFFFFFFFF if mask is None else nla.read_u32(mask, f"{what} output-mark mask")
    return Mark(nla.read_u32(value, f"{what} output-mark"), full)


def decode_policy(payload: memoryview, what: str) -> Policy:
    """xfrm_userpolicy_info and its attributes."""
    need(payload, USERPOLICY_INFO_SIZE, what)
    selector = unpack_selector(payload, what)
    if selector is None:
        raise XfrmDecodeError(f"{what}: a policy whose selector has family AF_UNSPEC")
    *_lifetimes, priority, index, direction, action, flags, share = USERPOLICY_INFO_TAIL.unpack_from(
        payload, SELECTOR.size
    )
    attrs = nla.collect(payload[USERPOLICY_INFO_SIZE:], what)
    templates: tuple[Template, ...] = ()
    for raw in attrs.get(XFRMA_TMPL, []):
        templates += unpack_templates(raw, f"{what} templates")
    mark = _one(attrs, XFRMA_MARK)
    return Policy(
        selector=selector,
        dir=direction,
        priority=priority,
        action=action,
        mark=None if mark is None else unpack_mark(mark, f"{what} mark"),
        templates=templates,
        index=index,
        flags=flags,
        share=share,
    )
