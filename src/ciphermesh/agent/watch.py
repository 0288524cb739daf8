"""Follow the store: a local cache of nodes and the key secret, kept current by watches that reconnect
(the key from the mounted file instead, when the agent is given one: see `key_file.mounted_key_file`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from ciphermesh.agent.key_file import KeyFileFollower
from ciphermesh.store.base import StoreEvent
from ciphermesh.store.model import KeySecret, Node
from ciphermesh.store.store import Store
from ciphermesh.store.stream import EventStream

T = TypeVar("T")
log = logging.getLogger(__name__)
RETRY_SECONDS = 1.0


class _Records(Protocol[T]):
    """What the view reads of a follower: the records, whether they are synced, what went wrong."""

    records: dict[str, T]
    synced: threading.Event

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def errors(self) -> list[str]: ...


class _Nothing(Generic[T]):
    """No records to follow (a WireGuard or unencrypted node needs no IPsec key): synced from the start."""

    def __init__(self) -> None:
        self.records: dict[str, T] = {}
        self.synced = threading.Event()
        self.synced.set()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def errors(self) -> list[str]:
        return []


class _Follower(Generic[T]):
    """Runs one watch in a thread, re-opening it after any error, and folds its events into a dict."""

    def __init__(
        self, name: str, open_stream: Callable[[], EventStream[StoreEvent[T]]], changed: threading.Event
    ) -> None:
        self.records: dict[str, T] = {}
        self.synced = threading.Event()
        self.last_error: str | None = None
        self._open = open_stream
        self._changed = changed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def errors(self) -> list[str]:
        return [f"store watch: {self.last_error}"] if self.last_error else []

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._open() as stream:
                    pending: dict[str, T] = {}
                    syncing = True
                    while not self._stop.is_set():
                        event = stream.get(timeout=0.5)
                        if event is None:
                            continue
                        self.last_error = None
                        target = pending if syncing else dict(self.records)
                        if event.kind == "put" and event.value is not None:
                            target[event.name] = event.value
                        elif event.kind == "delete":
                            target.pop(event.name, None)
                        if event.kind == "synced" and syncing:
                            # A new stream's first listing replaces the cache whole: records deleted
                            # meanwhile go too. A later `synced` (the store listed again, after 410 Gone
                            # or a compaction) follows the differences it already sent: the cache is
                            # current, and `pending` would bring back the first listing's records.
                            target, syncing = pending, False
                            self.synced.set()
                        if not syncing:
                            self.records = target
                            self._changed.set()
            except Exception as exc:  # the store's errors, whatever the backend: retry, never die
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("watch failed, retrying: %s", self.last_error)
                self._stop.wait(RETRY_SECONDS)


class ClusterView:
    """Nodes and the key secret as last seen; `changed` is set on every change. With `key_file` the
    key comes from that file (the Secret as the kubelet mounts it), not from the store; without `ipsec`
    no key is followed (on Kubernetes the agent may not read Secrets at all)."""

    def __init__(
        self, store: Store, secret_name: str, key_file: Path | None = None, *, ipsec: bool = True
    ) -> None:
        self.changed = threading.Event()
        self._nodes: _Follower[Node] = _Follower("nodes", store.watch_nodes, self.changed)
        self._secret: _Records[KeySecret]
        if not ipsec:
            self._secret = _Nothing()
        elif key_file is not None:
            self._secret = KeyFileFollower(key_file, secret_name, self.changed)
        else:
            self._secret = _Follower("secret", lambda: store.watch_key_secret(name=secret_name), self.changed)

    def start(self) -> None:
        self._nodes.start()
        self._secret.start()

    def stop(self) -> None:
        self._nodes.stop()
        self._secret.stop()

    @property
    def synced(self) -> bool:
        return self._nodes.synced.is_set() and self._secret.synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._nodes.synced.wait(timeout) and self._secret.synced.wait(timeout)

    def nodes(self) -> list[Node]:
        return list(self._nodes.records.values())

    def secret(self) -> KeySecret | None:
        return next(iter(self._secret.records.values()), None)

    def errors(self) -> list[str]:
        return [*self._nodes.errors(), *self._secret.errors()]
