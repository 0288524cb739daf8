"""Round trips encode -> decode, and hostile input: every prefix and random bytes decode or raise one error.

States cannot be added on this host (no kernel ESP), so state decoding is checked here and in
test_codec_layout.py; the real kernel's state dumps are checked in the VM tests.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from ciphermesh.datapath.kernel.xfrm import requests as rq
from ciphermesh.datapath.kernel.xfrm.decode import decode
from ciphermesh.datapath.kernel.xfrm.errors import XfrmDecodeError
from ciphermesh.datapath.kernel.xfrm.messages import Message, PolicyMessage, StateMessage
from ciphermesh.datapath.kernel.xfrm.model import Policy, State, StateCounters
from tests.xfrm.strategies import change_requests, policies, states


def decode_or_error(data: bytes) -> list[Message] | None:
    """The decoded messages, or None for the codec's own error; any other exception fails the test."""
    try:
        return decode(data)
    except XfrmDecodeError:
        return None


@given(states(), st.integers(0, 2**32 - 1))
def test_state_round_trip(state: State, seq: int) -> None:
    for update in (False, True):
        (message,) = decode(rq.new_state(state, update=update).encode(seq))
        assert isinstance(message, StateMessage)
        assert message.header.seq == seq
        assert message.state == state
        assert message.state.counters == StateCounters()
        for algorithm in ("aead", "crypt", "auth"):
            sent, got = getattr(state, algorithm), getattr(message.state, algorithm)
            assert (sent is None) == (got is None)
            if sent is not None:
                assert got.key.reveal() == sent.key.reveal()


@given(policies())
def test_policy_round_trip(policy: Policy) -> None:
    (message,) = decode(rq.new_policy(policy).encode(7))
    assert isinstance(message, PolicyMessage)
    assert message.policy == policy


@given(st.lists(change_requests, min_size=1, max_size=8), st.integers(1, 2**31 - 100))
def test_a_batch_splits_into_its_messages_in_order(requests: list[rq.Request], first: int) -> None:
    messages = decode(rq.encode_batch(requests, first))
    assert [(m.header.type, m.header.seq) for m in messages] == [
        (r.type, first + n) for n, r in enumerate(requests)
    ]


@settings(max_examples=60, deadline=None)
@given(st.lists(change_requests, min_size=1, max_size=3))
def test_every_prefix_decodes_or_raises_the_codec_error(requests: list[rq.Request]) -> None:
    data = rq.encode_batch(requests, 1)
    for end in range(len(data)):
        decode_or_error(data[:end])


@given(st.binary(max_size=600))
def test_random_bytes_decode_or_raise_the_codec_error(data: bytes) -> None:
    decode_or_error(data)


@given(change_requests, st.data())
def test_corrupted_messages_decode_or_raise_the_codec_error(request: rq.Request, data: st.DataObject) -> None:
    message = bytearray(request.encode(1))
    for _ in range(data.draw(st.integers(1, 8))):
        message[data.draw(st.integers(0, len(message) - 1))] = data.draw(st.integers(0, 255))
    decode_or_error(bytes(message))


@given(states())
def test_decoding_what_the_state_keeps_is_independent_of_counters(state: State) -> None:
    # Equality is about configuration, so a dumped state compares equal to the one that was sent.
    assert replace(state, counters=StateCounters(packets=5)) == state


@given(st.sampled_from([0x02, 0x03, 0x10, 0x13, 0x19, 0x1A]), st.integers(0, 0xFFFF), st.binary(max_size=700))
def test_any_payload_under_a_valid_header_decodes_or_raises_the_codec_error(
    kind: int, flags: int, payload: bytes
) -> None:
    decode_or_error(rq.Request(kind, flags, payload, "fuzz").encode(1))
