"""XFRM requests: build the netlink message for a state or policy change, a get, a dump or a flush."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ciphermesh.datapath.kernel.xfrm import attributes as nla
from ciphermesh.datapath.kernel.xfrm.constants import (
    IPSEC_PROTO_ANY,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    XFRM_MSG_DELPOLICY,
    XFRM_MSG_DELSA,
    XFRM_MSG_FLUSHPOLICY,
    XFRM_MSG_FLUSHSA,
    XFRM_MSG_GETPOLICY,
    XFRM_MSG_GETSA,
    XFRM_MSG_NEWPOLICY,
    XFRM_MSG_NEWSA,
    XFRM_MSG_UPDPOLICY,
    XFRM_MSG_UPDSA,
    XFRMA_ADDRESS_FILTER,
    XFRMA_ALG_AEAD,
    XFRMA_ALG_AUTH_TRUNC,
    XFRMA_ALG_CRYPT,
    XFRMA_MARK,
    XFRMA_REPLAY_ESN_VAL,
    XFRMA_SET_MARK,
    XFRMA_SET_MARK_MASK,
    XFRMA_SRCADDR,
    XFRMA_TMPL,
)
from ciphermesh.datapath.kernel.xfrm.messages import NLMSG_HEADER
from ciphermesh.datapath.kernel.xfrm.model import Policy, PolicyId, State, StateId
from ciphermesh.datapath.kernel.xfrm.structs import (
    ALGO,
    ALGO_AEAD,
    ALGO_AUTH,
    LIFETIME_CUR,
    NO_LIMITS,
    REPLAY_ESN,
    USERPOLICY_ID_TAIL,
    USERPOLICY_INFO_TAIL,
    USERSA_FLUSH,
    USERSA_ID,
    USERSA_INFO_TAIL,
    AddressFilter,
    pack_address,
    pack_algorithm_name,
    pack_mark,
    pack_selector,
    pack_spi,
    pack_template,
)

# What `ip xfrm` sets on a change, get or flush; dumps add NLM_F_DUMP instead of the ack.
CHANGE_FLAGS = NLM_F_REQUEST | NLM_F_ACK
DUMP_FLAGS = NLM_F_REQUEST | NLM_F_DUMP
# In xfrm_usersa_info the replay window is a u8; larger windows need XFRMA_REPLAY_ESN_VAL.
MAX_LEGACY_REPLAY_WINDOW = 255


@dataclass(frozen=True)
class Request:
    """One netlink message before its sequence number: type, flags, payload. repr never shows the payload."""

    type: int
    flags: int
    payload: bytes
    what: str

    def __repr__(self) -> str:
        return f"Request({self.what}, type={self.type:#x}, flags={self.flags:#x}, {len(self.payload)} bytes)"

    def encode(self, seq: int, pid: int = 0) -> bytes:
        """The message with its header; nlmsg_len counts no trailing padding (as `ip xfrm` sends)."""
        return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(self.payload), self.type, self.flags, seq, pid) + (
            self.payload
        )


@contextmanager
def _fields_of(what: str) -> Iterator[None]:
    """A value that does not fit its C field is a ValueError naming the object (never its key)."""
    try:
        yield
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{what}: a value does not fit its field in the kernel's struct ({exc})") from None


def encode_batch(requests: list[Request], first_seq: int, pid: int = 0) -> bytes:
    """Several requests in one buffer, numbered from `first_seq`, each starting 4-byte aligned."""
    parts = []
    for number, request in enumerate(requests):
        message = request.encode(first_seq + number, pid)
        parts.append(message + bytes(nla.align(len(message)) - len(message)))
    return b"".join(parts)


def _state_attributes(state: State) -> list[bytes]:
    attrs = []
    if state.auth is not None:
        auth = state.auth
        attrs.append(
            nla.attribute(
                XFRMA_ALG_AUTH_TRUNC,
                ALGO_AUTH.pack(pack_algorithm_name(auth.name), len(auth.key) * 8, auth.trunc_bits)
                + auth.key.reveal(),
            )
        )
    if state.crypt is not None:
        crypt = state.crypt
        attrs.append(
            nla.attribute(
                XFRMA_ALG_CRYPT,
                ALGO.pack(pack_algorithm_name(crypt.name), len(crypt.key) * 8) + crypt.key.reveal(),
            )
        )
    if state.aead is not None:
        aead = state.aead
        attrs.append(
            nla.attribute(
                XFRMA_ALG_AEAD,
                ALGO_AEAD.pack(pack_algorithm_name(aead.name), len(aead.key) * 8, aead.icv_bits)
                + aead.key.reveal(),
            )
        )
    if _esn_replay(state):
        # The bitmap (bmp_len u32 words) is the kernel's to keep; `ip xfrm` and Cilium send none.
        words = (state.replay_window + 31) // 32
        esn = REPLAY_ESN.pack(words, 0, 0, 0, 0, state.replay_window)
        attrs.append(nla.attribute(XFRMA_REPLAY_ESN_VAL, esn))
    if state.mark is not None:
        attrs.append(nla.attribute(XFRMA_MARK, pack_mark(state.mark)))
    if state.output_mark is not None:
        attrs.append(nla.u32(XFRMA_SET_MARK, state.output_mark.value))
        attrs.append(nla.u32(XFRMA_SET_MARK_MASK, state.output_mark.mask))
    return attrs


def _esn_replay(state: State) -> bool:
    return state.esn or state.replay_window > MAX_LEGACY_REPLAY_WINDOW


def _usersa_info(state: State) -> bytes:
    tail = USERSA_INFO_TAIL.pack(
        pack_address(state.dst),
        pack_spi(state.spi),
        state.proto,
        pack_address(state.src),
        *NO_LIMITS,
        *(0,) * (LIFETIME_CUR.size // 8),
        0,
        0,
        0,
        0,
        state.reqid,
        state.family,
        state.mode,
        0 if _esn_replay(state) else state.replay_window,
        state.flags,
    )
    return pack_selector(state.selector) + tail


def _label(state: State | StateId) -> str:
    return f"state {state.src}->{state.dst} spi {state.spi:#x}"


def new_state(state: State, *, update: bool = False, flags: int = CHANGE_FLAGS) -> Request:
    """XFRM_MSG_NEWSA (or UPDSA, to change an existing state) with every attribute the state has."""
    with _fields_of(_label(state)):
        body = _usersa_info(state) + b"".join(_state_attributes(state))
    return Request(XFRM_MSG_UPDSA if update else XFRM_MSG_NEWSA, flags, body, _label(state))


def _usersa_id(state: StateId) -> bytes:
    with _fields_of(_label(state)):
        body = USERSA_ID.pack(pack_address(state.dst), pack_spi(state.spi), state.family, state.proto)
        body += nla.attribute(XFRMA_SRCADDR, pack_address(state.src))
        if state.mark is not None:
            body += nla.attribute(XFRMA_MARK, pack_mark(state.mark))
    return body


def delete_state(state: StateId, *, flags: int = CHANGE_FLAGS) -> Request:
    """XFRM_MSG_DELSA by destination, SPI, protocol, source and mark."""
    return Request(XFRM_MSG_DELSA, flags, _usersa_id(state), f"delete {_label(state)}")


def get_state(state: StateId, *, flags: int = NLM_F_REQUEST) -> Request:
    """XFRM_MSG_GETSA for one state; the reply is a NEWSA message."""
    return Request(XFRM_MSG_GETSA, flags, _usersa_id(state), f"get {_label(state)}")


def dump_states(address_filter: AddressFilter | None = None, *, flags: int = DUMP_FLAGS) -> Request:
    """XFRM_MSG_GETSA as a dump: every state (or those the filter passes), then NLMSG_DONE."""
    body = b"" if address_filter is None else nla.attribute(XFRMA_ADDRESS_FILTER, address_filter.pack())
    return Request(XFRM_MSG_GETSA, flags, body, "dump states")


def flush_states(proto: int = 0, *, flags: int = CHANGE_FLAGS) -> Request:
    """XFRM_MSG_FLUSHSA: every state of `proto` (0 or IPSEC_PROTO_ANY: all IPsec protocols)."""
    if not 0 <= proto <= IPSEC_PROTO_ANY:
        raise ValueError(f"protocol {proto} is not a u8")
    return Request(XFRM_MSG_FLUSHSA, flags, USERSA_FLUSH.pack(proto), "flush states")


def _policy_label(policy: Policy | PolicyId) -> str:
    sel = policy.selector
    return f"policy {sel.src}->{sel.dst} dir {policy.dir}"


def new_policy(policy: Policy, *, update: bool = False, flags: int = CHANGE_FLAGS) -> Request:
    """XFRM_MSG_NEWPOLICY (or UPDPOLICY) with its templates and mark."""
    with _fields_of(_policy_label(policy)):
        body = _userpolicy_info(policy)
    return Request(XFRM_MSG_UPDPOLICY if update else XFRM_MSG_NEWPOLICY, flags, body, _policy_label(policy))


def _userpolicy_info(policy: Policy) -> bytes:
    body = pack_selector(policy.selector) + USERPOLICY_INFO_TAIL.pack(
        *NO_LIMITS,
        *(0,) * (LIFETIME_CUR.size // 8),
        policy.priority,
        policy.index,
        policy.dir,
        policy.action,
        policy.flags,
        policy.share,
    )
    if policy.templates:
        body += nla.attribute(XFRMA_TMPL, b"".join(pack_template(t) for t in policy.templates))
    if policy.mark is not None:
        body += nla.attribute(XFRMA_MARK, pack_mark(policy.mark))
    return body


def _userpolicy_id(policy: PolicyId) -> bytes:
    with _fields_of(_policy_label(policy)):
        body = pack_selector(policy.selector) + USERPOLICY_ID_TAIL.pack(policy.index, policy.dir)
        if policy.mark is not None:
            body += nla.attribute(XFRMA_MARK, pack_mark(policy.mark))
    return body


def delete_policy(policy: PolicyId, *, flags: int = CHANGE_FLAGS) -> Request:
    """XFRM_MSG_DELPOLICY by selector, direction and mark (or by index, when it is not 0)."""
    return Request(XFRM_MSG_DELPOLICY, flags, _userpolicy_id(policy), f"delete {_policy_label(policy)}")


def get_policy(policy: PolicyId, *, flags: int = NLM_F_REQUEST) -> Request:
    """XFRM_MSG_GETPOLICY for one policy; the reply is a NEWPOLICY message."""
    return Request(XFRM_MSG_GETPOLICY, flags, _userpolicy_id(policy), f"get {_policy_label(policy)}")


def dump_policies(*, flags: int = DUMP_FLAGS) -> Request:
    """XFRM_MSG_GETPOLICY as a dump: every policy, then NLMSG_DONE."""
    return Request(XFRM_MSG_GETPOLICY, flags, b"", "dump policies")


def flush_policies(*, flags: int = CHANGE_FLAGS) -> Request:
    """XFRM_MSG_FLUSHPOLICY: every policy of the main type (as `ip xfrm policy flush`)."""
    return Request(XFRM_MSG_FLUSHPOLICY, flags, b"", "flush policies")
