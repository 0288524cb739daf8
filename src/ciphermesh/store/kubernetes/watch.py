"""List, then watch from the list's resourceVersion with bookmarks and a server timeout, under a client read
timeout above it; on 410 Gone list again. Nodes are the CiliumNodes whose Lease is live: two such
list-watches feed one producer, which also lets a node go the moment its Lease runs out."""

from __future__ import annotations

import datetime
import logging
import queue
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from ciphermesh.store.base import Revision, StoreEvent
from ciphermesh.store.errors import RecordError, StoreUnavailableError
from ciphermesh.store.kubernetes.client import (
    GONE,
    NOT_FOUND,
    JSONObject,
    KubeApiError,
    KubeClient,
    WatchHandles,
)
from ciphermesh.store.kubernetes.objects import (
    CILIUM_NODES,
    COMPONENT,
    NODE_LEASE_NAMESPACE,
    NODE_LEASE_PREFIX,
    PART_OF,
    lease_expiry,
    lease_live,
    leases,
    name_of,
    node_lease_name,
    node_of,
    now,
    revision_of,
)
from ciphermesh.store.model import Node
from ciphermesh.store.stream import EventStream, StreamSink

T = TypeVar("T")
log = logging.getLogger(__name__)

WATCH_SERVER_TIMEOUT = 60
"""Seconds the server keeps one watch request open (`timeoutSeconds`)."""
_READ_MARGIN = 15.0
_RETRY_MIN, _RETRY_MAX = 0.2, 5.0
_POLL = 0.5


@dataclass(frozen=True)
class Listed:
    """Every object of a list-watch, as of a (re-)list."""

    source: str
    objects: dict[str, JSONObject]


@dataclass(frozen=True)
class Changed:
    source: str
    kind: str  # ADDED, MODIFIED, DELETED
    obj: JSONObject


def list_watch(
    api: KubeClient,
    source: str,
    path: str,
    selectors: dict[str, str],
    *,
    out: Callable[[Listed | Changed], None],
    stopped: threading.Event,
    handles: WatchHandles,
) -> None:
    """Feed `out` with a listing, then the changes after it; list again after 410 Gone; retry with
    jittered backoff while the server cannot be reached. Returns once `stopped` is set."""
    delay = _RETRY_MIN
    version: str | None = None
    while not stopped.is_set():
        try:
            if version is None:
                listing = api.request("GET", path, params=selectors)
                version = str(listing["metadata"]["resourceVersion"])
                out(Listed(source, {name_of(o): o for o in listing.get("items") or []}))
            params = {
                **selectors,
                "resourceVersion": version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(WATCH_SERVER_TIMEOUT),
            }
            timeout = WATCH_SERVER_TIMEOUT + _READ_MARGIN
            for event in api.watch(path, params, read_timeout=timeout, handles=handles):
                if stopped.is_set():
                    return
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise KubeApiError(
                        int(obj.get("code") or 500), str(obj.get("reason")), str(obj.get("message"))
                    )
                version = str(obj["metadata"]["resourceVersion"])
                if kind != "BOOKMARK":
                    out(Changed(source, str(kind), obj))
            delay = _RETRY_MIN
        except KubeApiError as exc:
            if exc.code == GONE:
                log.info("watch on %s expired (%s); listing again", path, exc)
                version = None
                continue
            log.warning("watch on %s: %s", path, exc)
            stopped.wait(delay)
            delay = min(delay * 2, _RETRY_MAX) * random.uniform(0.8, 1.2)
        except StoreUnavailableError:
            stopped.wait(delay)
            delay = min(delay * 2, _RETRY_MAX) * random.uniform(0.8, 1.2)


def _parse(obj: JSONObject, parse: Callable[[JSONObject], T], what: str) -> T | None:
    try:
        return parse(obj)
    except (RecordError, KeyError, TypeError) as exc:
        log.warning("ignoring %s %s: %s", what, (obj.get("metadata") or {}).get("name"), exc)
        return None


class _Producer:
    """Runs list-watches in threads and hands their output to one consumer loop."""

    def __init__(self) -> None:
        self.items: queue.Queue[Listed | Changed | BaseException] = queue.Queue()
        self.stopped = threading.Event()
        self.handles = WatchHandles()

    def stop(self) -> None:
        self.stopped.set()
        self.handles.close_all()

    def start(
        self, name: str, run: Callable[[Callable[[Listed | Changed], None], threading.Event], None]
    ) -> None:
        def target() -> None:
            try:
                run(self.items.put, self.stopped)
            except Exception as exc:  # an unexpected failure reaches the consumer
                self.items.put(exc)

        threading.Thread(target=target, name=name, daemon=True).start()

    def next(self, timeout: float) -> Listed | Changed | None:
        try:
            item = self.items.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item


def watch_objects(
    api: KubeClient, path: str, selectors: dict[str, str], parse: Callable[[JSONObject], T], what: str
) -> EventStream[StoreEvent[T]]:
    """The objects at `path` as puts, `synced` after each listing, then changes."""
    producer = _Producer()

    def produce(sink: StreamSink[StoreEvent[T]]) -> None:
        producer.start(
            f"list-watch {path}",
            lambda out, stop: list_watch(
                api, "o", path, selectors, out=out, stopped=stop, handles=producer.handles
            ),
        )
        known: dict[str, T] = {}
        while not sink.closed:
            item = producer.next(_POLL)
            if item is None:
                continue
            if isinstance(item, Listed):
                current = {
                    n: (v, revision_of(o))
                    for n, o in item.objects.items()
                    if (v := _parse(o, parse, what)) is not None
                }
                for name in known.keys() - current.keys():
                    sink.emit(StoreEvent("delete", name, known.pop(name)))
                for name, (value, rev) in current.items():
                    if known.get(name) != value:
                        known[name] = value
                        sink.emit(StoreEvent("put", name, value, rev))
                sink.emit(StoreEvent("synced", "", None))
                continue
            name = name_of(item.obj)
            parsed = _parse(item.obj, parse, what) if item.kind != "DELETED" else None
            if parsed is None:
                if name in known:
                    sink.emit(StoreEvent("delete", name, known.pop(name)))
            elif known.get(name) != parsed:
                known[name] = parsed
                sink.emit(StoreEvent("put", name, parsed, revision_of(item.obj)))

    return EventStream(f"store-watch {path}", produce, producer.stop)


class _NodeView:
    """CiliumNodes and their Leases as the watches last showed them; visible = parsed and Lease live."""

    def __init__(self, api: KubeClient) -> None:
        self.api = api
        self.nodes: dict[str, tuple[Node, Revision] | None] = {}
        self.leases: dict[str, JSONObject] = {}
        self.shown: dict[str, Node] = {}
        self.listed: set[str] = set()

    def visible(self, at: datetime.datetime) -> dict[str, tuple[Node, Revision]]:
        return {n: v for n, v in self.nodes.items() if v is not None and lease_live(self.leases.get(n), at)}

    def next_expiry(self) -> float:
        expiries = [e for n in self.shown if (e := lease_expiry(self.leases.get(n) or {})) is not None]
        if not expiries:
            return _POLL
        return max(0.01, min(_POLL, (min(expiries) - now()).total_seconds()))

    def lease_now(self, name: str) -> bool:
        """Read a node's Lease directly; False if it cannot be read. A CiliumNode is written after its
        Lease, so this puts a new node in the order its CiliumNode arrived even if the Lease's event
        is still on its way; and a Lease that seems to run out is read again before its node goes,
        since a watch can lag (an API server shutting down holds its watches open but silent)."""
        try:
            self.leases[name] = self.api.request(
                "GET", f"{leases(NODE_LEASE_NAMESPACE)}/{node_lease_name(name)}"
            )
        except KubeApiError as exc:
            if exc.code != NOT_FOUND:
                return False
            self.leases.pop(name, None)
        except StoreUnavailableError:
            return False
        return True

    def diff(self, sink: StreamSink[StoreEvent[Node]]) -> None:
        current = self.visible(now())
        for name in [n for n in self.shown if n not in current]:
            versioned = self.nodes.get(name)
            if versioned is not None and name in self.leases:
                # Run out by the clock, not deleted: confirm, and keep the node while that is not possible.
                if not self.lease_now(name):
                    continue
                if lease_live(self.leases.get(name), now()):
                    current[name] = versioned
                    continue
            sink.emit(StoreEvent("delete", name, self.shown.pop(name)))
        for name, (node, rev) in current.items():
            if self.shown.get(name) != node:
                self.shown[name] = node
                sink.emit(StoreEvent("put", name, node, rev))


def watch_nodes(api: KubeClient, name: str | None) -> EventStream[StoreEvent[Node]]:
    """Live nodes (or the one named) as puts, then `synced`, then changes, expiry included."""
    producer = _Producer()
    node_fields = {"fieldSelector": f"metadata.name={name}"} if name is not None else {}
    lease_selectors = {"labelSelector": f"{PART_OF}=ciphermesh,{COMPONENT}=agent"}
    if name is not None:
        lease_selectors["fieldSelector"] = f"metadata.name={node_lease_name(name)}"

    def produce(sink: StreamSink[StoreEvent[Node]]) -> None:
        view = _NodeView(api)
        lease_path = leases(NODE_LEASE_NAMESPACE)
        producer.start(
            "list-watch ciliumnodes",
            lambda out, stop: list_watch(
                api, "nodes", CILIUM_NODES, node_fields, out=out, stopped=stop, handles=producer.handles
            ),
        )
        producer.start(
            "list-watch node leases",
            lambda out, stop: list_watch(
                api, "leases", lease_path, lease_selectors, out=out, stopped=stop, handles=producer.handles
            ),
        )
        while not sink.closed:
            item = producer.next(view.next_expiry())
            if isinstance(item, Listed):
                view.listed.add(item.source)
                if item.source == "nodes":
                    view.nodes = {n: versioned_node(o) for n, o in item.objects.items()}
                else:
                    view.leases = {n.removeprefix(NODE_LEASE_PREFIX): o for n, o in item.objects.items()}
            elif isinstance(item, Changed):
                _apply(view, item)
            if view.listed == {"nodes", "leases"}:
                view.diff(sink)
                if isinstance(item, Listed):
                    sink.emit(StoreEvent("synced", "", None))

    return EventStream(f"store-watch nodes {name or ''}".strip(), produce, producer.stop)


def versioned_node(obj: JSONObject) -> tuple[Node, Revision] | None:
    node = _parse(obj, node_of, "CiliumNode")
    return (node, revision_of(obj)) if node is not None else None


def _apply(view: _NodeView, item: Changed) -> None:
    name = name_of(item.obj)
    if item.source == "leases":
        name = name.removeprefix(NODE_LEASE_PREFIX)
        if item.kind == "DELETED":
            view.leases.pop(name, None)
        elif _newer(item.obj, view.leases.get(name)):
            view.leases[name] = item.obj
        return
    if item.kind == "DELETED":
        view.nodes.pop(name, None)
        return
    view.nodes[name] = versioned_node(item.obj)
    if not lease_live(view.leases.get(name), now()):
        view.lease_now(name)


def _newer(lease: JSONObject, than: JSONObject | None) -> bool:
    """A Lease event older than what `lease_now` read must not bring a renewal back."""
    if than is None:
        return True
    new, old = lease_expiry(lease), lease_expiry(than)
    return new is None or old is None or new >= old


def iter_live_nodes(
    cilium_nodes: list[JSONObject], node_leases: dict[str, JSONObject]
) -> Iterator[tuple[Node, Revision]]:
    """The parsed CiliumNodes whose Lease is live (malformed ones logged and skipped)."""
    at = now()
    for obj in cilium_nodes:
        versioned = versioned_node(obj)
        if versioned is not None and lease_live(node_leases.get(versioned[0].name), at):
            yield versioned
