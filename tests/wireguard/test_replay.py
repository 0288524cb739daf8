"""Property tests: the replay window against a reference model, and transport counters end to end."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ciphermesh.wireguard.counters import Drop
from ciphermesh.wireguard.replay import WINDOW_SIZE, ReplayFilter
from tests.support.wireguard import EP_A, ipv4_packet, make_pair

LIMIT = (1 << 64) - (1 << 13) - 1


class ModelWindow:
    """The filter's specification: each counter once, never more than WINDOW_SIZE behind the newest."""

    def __init__(self) -> None:
        self.last = 0
        self.seen: set[int] = set()

    def validate(self, counter: int, limit: int) -> bool:
        if counter >= limit or counter in self.seen:
            return False
        if counter < self.last and self.last - counter > WINDOW_SIZE:
            return False
        self.seen.add(counter)
        self.last = max(self.last, counter)
        return True


# Counters cluster around a moving front, with the offsets where a window is most likely to be
# wrong (its edge, 64-bit word boundaries, a full ring of 8192), far jumps, values near the limit,
# and repeats of counters seen before.
EDGES = [-WINDOW_SIZE - 1, -WINDOW_SIZE, -WINDOW_SIZE + 1, -8192, -8191, -65, -64, -63, -1, 0, 1]
EDGES += [63, 64, 65, WINDOW_SIZE, WINDOW_SIZE + 1, 8192, 8193, 16384]
NEAR_LIMIT = [LIMIT - 2, LIMIT - 1, LIMIT, LIMIT + 1, (1 << 64) - 1]
offsets = st.one_of(
    st.sampled_from(EDGES),
    st.integers(min_value=-WINDOW_SIZE - 70, max_value=130),
    st.integers(min_value=-20_000, max_value=20_000),
)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_replay_filter_matches_the_model(data: st.DataObject) -> None:
    window, model = ReplayFilter(), ModelWindow()
    history: list[int] = []
    for _ in range(data.draw(st.integers(min_value=1, max_value=120))):
        choice = data.draw(st.integers(min_value=0, max_value=19))
        if choice == 0:
            counter = data.draw(st.sampled_from(NEAR_LIMIT))
        elif choice <= 3 and history:
            counter = data.draw(st.sampled_from(history))
        else:
            counter = max(0, model.last + data.draw(offsets))
        assert window.validate(counter, LIMIT) is model.validate(counter, LIMIT), counter
        history.append(counter)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=1 << 20), st.integers(min_value=1, max_value=200))
def test_replay_filter_accepts_a_fresh_sequence_exactly_once(start: int, length: int) -> None:
    window = ReplayFilter()
    counters = list(range(start, start + length))
    assert all(window.validate(c) for c in counters)
    assert not any(window.validate(c) for c in counters)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_reordered_and_duplicated_datagrams_are_delivered_once(data: st.DataObject) -> None:
    pair = make_pair(seed=data.draw(st.integers(0, 1000)))
    pair.a_to_b(b"start")
    count = data.draw(st.integers(min_value=1, max_value=60))
    for n in range(count):
        pair.a.send(ipv4_packet("10.9.0.1", "10.9.0.2", n.to_bytes(2, "big")), pair.clock.now)
    datagrams = [d for d, _ in pair.a.take_outgoing()]
    counters = [int.from_bytes(d[8:16], "little") for d in datagrams]
    # The sender numbers its messages 0, 1, 2, ... per keypair, without gaps.
    assert counters == list(range(counters[0], counters[0] + count))
    schedule = data.draw(st.lists(st.sampled_from(datagrams), min_size=count, max_size=3 * count))
    schedule += datagrams  # make sure every datagram arrives at least once
    random.Random(data.draw(st.integers())).shuffle(schedule)
    delivered = [p for d in schedule if (p := pair.b.receive(d, EP_A, pair.clock.now)) is not None]
    assert sorted(p[20:] for p in delivered) == [n.to_bytes(2, "big") for n in range(count)]
    assert pair.b.drops[Drop.REPLAYED] == len(schedule) - count


def test_datagrams_older_than_the_window_are_dropped() -> None:
    pair = make_pair()
    pair.a_to_b(b"start")
    pair.a.send(ipv4_packet("10.9.0.1", "10.9.0.2", b"old"), pair.clock.now)
    old = pair.a.take_outgoing()
    for _ in range(WINDOW_SIZE + 1):
        pair.a.send(ipv4_packet("10.9.0.1", "10.9.0.2", b"x"), pair.clock.now)
    newest = pair.a.take_outgoing()[-1][0]
    assert pair.b.receive(newest, EP_A, pair.clock.now) is not None
    assert pair.b.receive(old[0][0], EP_A, pair.clock.now) is None
    assert pair.b.drops[Drop.REPLAYED] == 1


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_batched_paths_behave_like_one_at_a_time(data: st.DataObject) -> None:
    """receive_many/send_many give the same packets, datagrams, drops and timers as single calls."""
    seed = data.draw(st.integers(0, 1000))
    single, batched = make_pair(seed=seed), make_pair(seed=seed)
    for pair in (single, batched):
        pair.a_to_b(b"start")
        pair.b_to_a(b"reply")
    payloads = data.draw(st.lists(st.binary(min_size=0, max_size=60), min_size=1, max_size=30))
    packets = [ipv4_packet("10.9.0.1", "10.9.0.2", p) for p in payloads]
    packets += data.draw(
        st.lists(st.sampled_from([b"", b"\x45" + bytes(10), ipv4_packet("10.9.0.1", "10.8.0.1")]))
    )
    now = single.clock.now + data.draw(st.floats(min_value=0, max_value=200))
    for packet in packets:
        single.a.send(packet, now)
    batched.a.send_many(packets, now)
    sent_single, sent_batched = single.a.take_outgoing(), batched.a.take_outgoing()
    assert sent_single == sent_batched
    datagrams = [d for d, _ in sent_single]
    schedule = data.draw(st.lists(st.sampled_from(datagrams), max_size=40)) if datagrams else []
    schedule += [bytes([4, 0, 0, 0]) + bytes(40), b"\x01", *datagrams]
    sources = [EP_A if data.draw(st.booleans()) else ("192.0.2.99", 7) for _ in schedule]
    one_by_one = [p for d, s in zip(schedule, sources, strict=True) if (p := single.b.receive(d, s, now))]
    assert batched.b.receive_many(list(zip(schedule, sources, strict=True)), now) == one_by_one
    for x, y in ((single.a, batched.a), (single.b, batched.b)):
        assert x.drops.as_dict() == y.drops.as_dict()
        assert x.take_outgoing() == y.take_outgoing()
        (px,), (py,) = x.peers, y.peers
        assert (px.rx_bytes, px.tx_bytes, px.endpoint) == (py.rx_bytes, py.tx_bytes, py.endpoint)
        tx, ty = px.timers, py.timers
        assert [getattr(tx, a) for a in tx.__slots__ if a != "_jitter"] == [
            getattr(ty, a) for a in ty.__slots__ if a != "_jitter"
        ]
