"""The agent's cache of a store watch: a re-list inside the same stream (410 Gone, a compaction) keeps
the records current instead of bringing back those of the stream's first listing."""

from __future__ import annotations

import threading

from ciphermesh.agent.watch import _Follower
from ciphermesh.store.base import StoreEvent
from ciphermesh.store.stream import EventStream, StreamSink
from tests.support.wait import wait_until


def test_a_second_listing_in_the_same_stream_keeps_what_came_after_the_first() -> None:
    def produce(sink: StreamSink[StoreEvent[str]]) -> None:
        sink.emit(StoreEvent("put", "node-1", "starting"))
        sink.emit(StoreEvent("synced", "", None))
        sink.emit(StoreEvent("put", "node-1", "ready"))
        sink.emit(StoreEvent("put", "node-2", "ready"))
        # The store listed again (a watch expired): it sends what differs, here nothing, then `synced`.
        sink.emit(StoreEvent("synced", "", None))
        sink.emit(StoreEvent("put", "node-3", "ready"))
        sink.wait_closed(60)

    changed = threading.Event()
    follower: _Follower[str] = _Follower("nodes", lambda: EventStream("test", produce), changed)
    follower.start()
    try:
        wait_until(lambda: "node-3" in follower.records, 10.0, "the event after the second listing")
        assert follower.records == {"node-1": "ready", "node-2": "ready", "node-3": "ready"}
    finally:
        follower.stop()
