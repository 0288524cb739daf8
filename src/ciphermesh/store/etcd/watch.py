"""List + watch over a key or a prefix: `put` for each record, `synced`, then changes; after etcd
compacted the history the watch needed, list again and report the difference."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from ciphermesh.store.base import StoreEvent
from ciphermesh.store.etcd.client import EtcdClient
from ciphermesh.store.etcd.messages import EtcdUnavailableError, WatchCompactedError, WatchEvent
from ciphermesh.store.etcd.records import parse_kv, revision, store_errors
from ciphermesh.store.stream import EventStream, StreamSink

T = TypeVar("T")
log = logging.getLogger(__name__)

_RETRY_DELAY = 0.5


def watch_records(
    client: EtcdClient, key: bytes, range_end: bytes | None, parse: Callable[[bytes], T]
) -> EventStream[StoreEvent[T]]:
    """The records under `key` (up to `range_end`) as a resumable event stream."""
    watcher = _RecordWatcher(client, key, range_end, parse)

    def produce(sink: StreamSink[StoreEvent[T]]) -> None:
        with store_errors():
            watcher.run(sink)

    return EventStream(f"store-watch {key.decode(errors='replace')}", produce, watcher.interrupt)


class _RecordWatcher(Generic[T]):
    """Keeps what it delivered, so a re-list reports only the difference and a consumer's view
    always converges to the store's."""

    def __init__(
        self, client: EtcdClient, key: bytes, range_end: bytes | None, parse: Callable[[bytes], T]
    ) -> None:
        self._client = client
        self._key = key
        self._range_end = range_end
        self._parse = parse
        self._known: dict[str, T] = {}
        self._inner: EventStream[WatchEvent] | None = None
        self._lock = threading.Lock()

    def interrupt(self) -> None:
        """Wake the producer, which may be waiting on the etcd watch, so that closing is quick."""
        with self._lock:
            inner = self._inner
        if inner is not None:
            inner.close()

    @staticmethod
    def _name(kv_key: bytes) -> str:
        return kv_key.decode(errors="replace").rsplit("/", 1)[-1]

    def run(self, sink: StreamSink[StoreEvent[T]]) -> None:
        while not sink.closed:
            try:
                listing = self._client.range(self._key, self._range_end)
            except EtcdUnavailableError:
                if sink.wait_closed(_RETRY_DELAY):
                    return
                continue
            current = {
                self._name(kv.key): (value, kv.mod_revision)
                for kv in listing.kvs
                if (value := parse_kv(kv, self._parse)) is not None
            }
            for name in self._known.keys() - current.keys():
                sink.emit(StoreEvent("delete", name, self._known[name]))
            for name, (value, mod_revision) in current.items():
                if self._known.get(name) != value:
                    sink.emit(StoreEvent("put", name, value, revision(mod_revision)))
            self._known = {name: value for name, (value, _) in current.items()}
            sink.emit(StoreEvent("synced", "", None))
            try:
                self._follow(sink, listing.revision + 1)
            except WatchCompactedError as exc:
                log.info(
                    "watch on %s fell behind (%s); listing again", self._key.decode(errors="replace"), exc
                )

    def _follow(self, sink: StreamSink[StoreEvent[T]], start_revision: int) -> None:
        events = self._client.watch(self._key, self._range_end, start_revision=start_revision)
        with self._lock:
            self._inner = events
        with events:
            while not sink.closed and not events.closed:
                event = events.get(timeout=_RETRY_DELAY)
                if event is None:
                    continue
                name = self._name(event.kv.key)
                value = parse_kv(event.kv, self._parse) if event.kind == "put" else None
                if value is None:
                    # A deletion, or a record that no longer parses: either way the old record is gone.
                    if name in self._known:
                        sink.emit(StoreEvent("delete", name, self._known.pop(name)))
                    continue
                self._known[name] = value
                sink.emit(StoreEvent("put", name, value, revision(event.revision)))
