"""Hypothesis strategies for XFRM states, policies and the requests built from them."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

from hypothesis import strategies as st

from ciphermesh.datapath.kernel.xfrm import requests as rq
from ciphermesh.datapath.kernel.xfrm.model import (
    Address,
    Aead,
    AuthTrunc,
    Cipher,
    Mark,
    Policy,
    PolicyId,
    Selector,
    State,
    StateId,
    Template,
)
from ciphermesh.keys.secret_bytes import SecretBytes

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
names = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=63)
keys = st.binary(min_size=0, max_size=64).map(SecretBytes)


def addresses(version: int) -> st.SearchStrategy[Address]:
    if version == 4:
        return st.builds(IPv4Address, st.integers(0, 2**32 - 1))
    return st.builds(IPv6Address, st.integers(0, 2**128 - 1))


def prefixes(version: int) -> st.SearchStrategy[IPv4Interface | IPv6Interface]:
    bits = 32 if version == 4 else 128
    kind = IPv4Interface if version == 4 else IPv6Interface
    return st.builds(lambda a, n: kind((a, n)), st.integers(0, 2**bits - 1), st.integers(0, bits))


marks = st.builds(Mark, u32, u32)


@st.composite
def selectors(draw: st.DrawFn, version: int) -> Selector:
    return Selector(
        src=draw(prefixes(version)), dst=draw(prefixes(version)), proto=draw(u8),
        sport=draw(u16), sport_mask=draw(u16), dport=draw(u16), dport_mask=draw(u16),
        ifindex=draw(st.integers(-(2**31), 2**31 - 1)), user=draw(u32),
    )  # fmt: skip


@st.composite
def templates(draw: st.DrawFn, version: int) -> Template:
    return Template(
        src=draw(addresses(version)), dst=draw(addresses(version)), proto=draw(u8), spi=draw(u32),
        reqid=draw(u32), mode=draw(u8), share=draw(u8), optional=draw(st.booleans()),
        aalgos=draw(u32), ealgos=draw(u32), calgos=draw(u32),
    )  # fmt: skip


@st.composite
def states(draw: st.DrawFn) -> State:
    version = draw(st.sampled_from([4, 6]))
    flags = draw(u8)
    window = draw(st.integers(0, 4096) if flags & 128 else st.integers(0, 255))
    return State(
        src=draw(addresses(version)), dst=draw(addresses(version)), spi=draw(u32), proto=draw(u8),
        mode=draw(u8), reqid=draw(u32),
        aead=draw(st.none() | st.builds(Aead, names, keys, u32)),
        crypt=draw(st.none() | st.builds(Cipher, names, keys)),
        auth=draw(st.none() | st.builds(AuthTrunc, names, keys, u32)),
        flags=flags, replay_window=window, mark=draw(st.none() | marks), output_mark=draw(st.none() | marks),
        selector=draw(st.none() | selectors(version)),
    )  # fmt: skip


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    version = draw(st.sampled_from([4, 6]))
    return Policy(
        selector=draw(selectors(version)), dir=draw(u8), priority=draw(u32), action=draw(u8),
        mark=draw(st.none() | marks), templates=tuple(draw(st.lists(templates(version), max_size=4))),
        index=draw(u32), flags=draw(u8), share=draw(u8),
    )  # fmt: skip


def _state_id(state: State) -> StateId:
    return state.id


def _policy_id(policy: Policy) -> PolicyId:
    return PolicyId(policy.selector, policy.dir, policy.mark, policy.index)


change_requests = st.one_of(
    states().map(rq.new_state),
    states().map(lambda s: rq.new_state(s, update=True)),
    states().map(_state_id).map(rq.delete_state),
    policies().map(rq.new_policy),
    policies().map(lambda p: rq.new_policy(p, update=True)),
    policies().map(_policy_id).map(rq.delete_policy),
    u8.map(rq.flush_states),
    st.just(rq.flush_policies()),
)
