"""A stoppable event stream: a producer thread feeds a queue that one consumer reads."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

E = TypeVar("E")


class _Wake:
    """Put on the queue by `close` so a consumer blocked in `get` returns."""


_WAKE = _Wake()

log = logging.getLogger(__name__)


class StreamSink(Generic[E]):
    """The producer's side: emit events, report a fatal error, see whether the consumer closed."""

    def __init__(self, items: queue.Queue[E | BaseException | _Wake], closed: threading.Event) -> None:
        self._items = items
        self._closed = closed

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_closed(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds; True as soon as the consumer has closed the stream."""
        return self._closed.wait(timeout)

    def emit(self, event: E) -> None:
        self._items.put(event)

    def fail(self, error: BaseException) -> None:
        self._items.put(error)


class EventStream(Generic[E]):
    """Events from a background producer; `get` waits with a timeout, `close` stops the producer."""

    def __init__(
        self,
        name: str,
        produce: Callable[[StreamSink[E]], None],
        interrupt: Callable[[], None] | None = None,
    ) -> None:
        self._items: queue.Queue[E | BaseException | _Wake] = queue.Queue()
        self._closed = threading.Event()
        self._interrupt = interrupt
        self._sink = StreamSink(self._items, self._closed)
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(produce,), name=name, daemon=True)
        self._thread.start()

    def _run(self, produce: Callable[[StreamSink[E]], None]) -> None:
        try:
            produce(self._sink)
        except Exception as exc:  # the producer's last word reaches the consumer instead of a log
            if not self._closed.is_set():
                self._sink.fail(exc)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def get(self, timeout: float | None = None) -> E | None:
        """The next event, or None after `timeout` seconds or once closed; raises the producer's error."""
        if self._failed is not None:
            raise self._failed
        if self._closed.is_set():
            return None
        try:
            item = self._items.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, _Wake):
            return None
        if isinstance(item, BaseException):
            self._failed = item
            raise item
        return item

    def __iter__(self) -> Iterator[E]:
        while not self._closed.is_set():
            item = self.get(timeout=0.5)
            if item is not None:
                yield item

    def close(self) -> None:
        """Stop the producer and wait briefly for its thread; events not yet read are dropped."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._items.put(_WAKE)
        if self._interrupt is not None:
            self._interrupt()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                log.warning("event stream %s did not stop within 5 s", self._thread.name)

    def __enter__(self) -> EventStream[E]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
