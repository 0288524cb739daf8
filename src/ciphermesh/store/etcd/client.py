"""A small typed client for etcd's v3 JSON gateway (etcd 3.4): KV, transactions, leases, watch.

Keys and values are bytes here and base64 on the wire; revisions and lease IDs are ints here and
decimal strings on the wire. Every failure is an `EtcdError` with a one-line message. A watch runs on
its own connection and survives etcd restarts by resuming from the revision after the last event.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import socket
import threading
import urllib.parse
from collections.abc import Sequence
from typing import Any

from ciphermesh.store.etcd.messages import (
    Compare,
    EtcdError,
    EtcdRequestError,
    EtcdUnavailableError,
    KeyValue,
    Lease,
    LeaseNotFoundError,
    Op,
    Put,
    RangeResult,
    TxnResult,
    WatchCompactedError,
    WatchEvent,
    b64,
    prefix_end,
    range_body,
)
from ciphermesh.store.stream import EventStream, StreamSink

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
# gRPC codes that mean "not now" rather than "not this request": etcd (or the gateway's own gRPC
# connection to it) is shutting down, restarting or overloaded.
_GRPC_RETRYABLE = frozenset({1, 4, 14})  # CANCELED, DEADLINE_EXCEEDED, UNAVAILABLE
_MAX_IDLE_CONNECTIONS = 8
_WATCH_BACKOFF_MAX = 2.0


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix stream socket."""

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class EtcdClient:
    """Requests to one etcd endpoint over pooled keep-alive HTTP connections; thread-safe."""

    def __init__(self, endpoint: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        parsed = urllib.parse.urlsplit(endpoint)
        self._unix_path: str | None = None
        if parsed.scheme == "unix" and parsed.path.startswith("/"):
            # A unix socket reaches etcd from any network namespace (the lab's nodes) without a route.
            self._unix_path = parsed.path
            self.endpoint = f"unix://{parsed.path}"
            self._host, self._port = "localhost", 80
        elif parsed.scheme == "http" and parsed.hostname and parsed.port is not None:
            self.endpoint = f"http://{parsed.hostname}:{parsed.port}"
            self._host, self._port = parsed.hostname, parsed.port
        else:
            raise EtcdError(f"etcd endpoint {endpoint!r} is not http://HOST:PORT or unix:///PATH")
        self.timeout = timeout
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def health(self) -> bool:
        """True if etcd answers and reports itself healthy (it has a leader)."""
        conn = self.new_connection(self.timeout)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()
        try:
            return resp.status == 200 and json.loads(body).get("health") == "true"
        except ValueError:
            return False

    def get(self, key: bytes) -> KeyValue | None:
        kvs = self.range(key).kvs
        return kvs[0] if kvs else None

    def get_prefix(self, prefix: bytes) -> RangeResult:
        return self.range(prefix, prefix_end(prefix))

    def range(self, key: bytes, range_end: bytes | None = None) -> RangeResult:
        reply = self._call("/v3/kv/range", range_body(key, range_end))
        return _range_result(reply)

    def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Store `value`; returns the revision of the write."""
        reply = self._call("/v3/kv/put", Put(key, value, lease).to_json()["request_put"])
        return _header_revision(reply)

    def delete(self, key: bytes, range_end: bytes | None = None) -> int:
        """Delete a key (or a range); returns how many keys went."""
        reply = self._call("/v3/kv/deleterange", range_body(key, range_end))
        return int(reply.get("deleted", 0))

    def delete_prefix(self, prefix: bytes) -> int:
        return self.delete(prefix, prefix_end(prefix))

    def txn(self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        """If every comparison holds run `success`, else `failure`, atomically."""
        body = {
            "compare": [c.to_json() for c in compare],
            "success": [op.to_json() for op in success],
            "failure": [op.to_json() for op in failure],
        }
        reply = self._call("/v3/kv/txn", body)
        ranges = tuple(
            tuple(_key_value(kv) for kv in r["response_range"].get("kvs", []))
            for r in reply.get("responses", [])
            if "response_range" in r
        )
        return TxnResult(bool(reply.get("succeeded", False)), _header_revision(reply), ranges)

    def compact(self, revision: int) -> None:
        """Drop the history before `revision` (watches that need it get `WatchCompactedError`)."""
        self._call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    def lease_grant(self, ttl: int) -> Lease:
        """A new lease; etcd raises TTLs below its minimum (2 s with default timing)."""
        reply = self._call("/v3/lease/grant", {"TTL": str(ttl)})
        return Lease(int(reply["ID"]), int(reply.get("TTL", ttl)))

    def lease_keepalive(self, lease_id: int) -> int:
        """Renew a lease; returns its TTL, raises `LeaseNotFoundError` if it already expired."""
        reply = self._call("/v3/lease/keepalive", {"ID": str(lease_id)})
        ttl = int(reply.get("result", {}).get("TTL", 0))
        if ttl <= 0:
            raise LeaseNotFoundError(f"etcd lease {lease_id:x} expired")
        return ttl

    def lease_revoke(self, lease_id: int) -> bool:
        """Revoke a lease and delete its keys; False if it was already gone."""
        try:
            self._call("/v3/lease/revoke", {"ID": str(lease_id)})
        except LeaseNotFoundError:
            return False
        return True

    def lease_time_to_live(self, lease_id: int) -> int:
        """Seconds left on a lease, -1 if it does not exist."""
        reply = self._call("/v3/lease/timetolive", {"ID": str(lease_id)})
        return int(reply.get("TTL", -1))

    def watch(
        self, key: bytes, range_end: bytes | None = None, *, start_revision: int | None = None
    ) -> EventStream[WatchEvent]:
        """Events on a key or range from `start_revision` (default: every change after this call)."""
        if start_revision is None:
            body = {**range_body(key, range_end), "count_only": True}
            start_revision = _header_revision(self._call("/v3/kv/range", body)) + 1
        watcher = _Watcher(self, key, range_end, start_revision)
        return EventStream(f"etcd-watch {key!r}", watcher.run, watcher.interrupt)

    def watch_prefix(self, prefix: bytes, *, start_revision: int | None = None) -> EventStream[WatchEvent]:
        return self.watch(prefix, prefix_end(prefix), start_revision=start_revision)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def new_connection(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._unix_path is not None:
            return _UnixHTTPConnection(self._unix_path, timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _acquire(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self.new_connection(self.timeout), False

    def _release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < _MAX_IDLE_CONNECTIONS:
                self._idle.append(conn)
                return
        conn.close()

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        payload = json.dumps(body).encode()
        while True:
            conn, reused = self._acquire()
            try:
                conn.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                # A pooled connection that etcd closed (e.g. it restarted) fails before etcd saw
                # the request; only then is a second try safe.
                if reused and isinstance(exc, _STALE_CONNECTION_ERRORS):
                    continue
                raise EtcdUnavailableError(
                    f"etcd at {self.endpoint} is unreachable: {_describe(exc)}"
                ) from None
            if resp.will_close:
                conn.close()
            else:
                self._release(conn)
            return decode_reply(self.endpoint, path, resp.status, data)


_STALE_CONNECTION_ERRORS = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


def decode_reply(endpoint: str, path: str, status: int, data: bytes) -> dict[str, Any]:
    """The JSON body of a gateway reply, or the typed error it carries."""
    try:
        reply = json.loads(data) if data else {}
    except ValueError:
        raise EtcdUnavailableError(
            f"etcd at {endpoint} sent a reply that is not JSON (HTTP {status})"
        ) from None
    if not isinstance(reply, dict):
        raise EtcdUnavailableError(f"etcd at {endpoint} sent an unexpected reply to {path}")
    error = reply.get("error")
    if status == 200 and not error:
        return reply
    if isinstance(error, dict):
        reply = error
    raise error_from(endpoint, path, reply, status)


def error_from(endpoint: str, path: str, reply: dict[str, Any], status: int) -> EtcdError:
    message = str(reply.get("message") or reply.get("error") or f"HTTP {status}").splitlines()[0]
    code = int(reply.get("code", 0) or reply.get("grpc_code", 0) or 0)
    http_code = int(reply.get("http_code", status) or status)
    if "lease not found" in message:
        return LeaseNotFoundError(f"etcd: {message}")
    if code in _GRPC_RETRYABLE or http_code in (502, 503, 504):
        return EtcdUnavailableError(f"etcd at {endpoint} cannot serve {path} now: {message}")
    return EtcdRequestError(f"etcd rejected {path}: {message}", code)


class _Watcher:
    """One watch: streams on its own connection and reconnects, resuming after the last revision."""

    def __init__(self, client: EtcdClient, key: bytes, range_end: bytes | None, start_revision: int) -> None:
        self._client = client
        self._key = key
        self._range_end = range_end
        self.next_revision = start_revision
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def interrupt(self) -> None:
        with self._lock:
            sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def run(self, sink: StreamSink[WatchEvent]) -> None:
        backoff = 0.1
        while not sink.closed:
            try:
                if self._stream(sink):
                    backoff = 0.1
            except (EtcdRequestError, WatchCompactedError) as exc:
                sink.fail(exc)
                return
            except (OSError, http.client.HTTPException, EtcdError, ValueError) as exc:
                log.debug("watch on %r interrupted: %s", self._key, _describe(exc))
            if sink.wait_closed(backoff):
                return
            backoff = min(backoff * 2, _WATCH_BACKOFF_MAX)

    def _stream(self, sink: StreamSink[WatchEvent]) -> bool:
        """Read one watch connection to its end; True if etcd accepted the watch."""
        conn = self._client.new_connection(self._client.timeout)
        with self._lock:
            self._conn = conn
        created = False
        try:
            if sink.closed:
                return False
            conn.connect()
            assert conn.sock is not None
            _keepalive(conn.sock)
            # Events may be minutes apart; close() interrupts the blocking read instead.
            conn.sock.settimeout(None)
            conn.request("POST", "/v3/watch", body=json.dumps(self._create_request()).encode())
            resp = conn.getresponse()
            if resp.status != 200:
                decode_reply(self._client.endpoint, "/v3/watch", resp.status, resp.read())
            while not sink.closed:
                line = resp.readline()
                if not line:
                    return created
                created = self._handle(json.loads(line), sink) or created
            return created
        finally:
            with self._lock:
                self._conn = None
            conn.close()

    def _create_request(self) -> dict[str, Any]:
        request: dict[str, Any] = {
            "key": b64(self._key),
            "start_revision": str(self.next_revision),
            "prev_kv": True,
            "progress_notify": True,
        }
        if self._range_end is not None:
            request["range_end"] = b64(self._range_end)
        return {"create_request": request}

    def _handle(self, message: dict[str, Any], sink: StreamSink[WatchEvent]) -> bool:
        if "error" in message:
            error = message["error"]
            raise error_from(
                self._client.endpoint, "/v3/watch", error if isinstance(error, dict) else message, 200
            )
        result = message.get("result", {})
        header_revision = int(result.get("header", {}).get("revision", 0))
        created = bool(result.get("created"))
        if result.get("canceled"):
            compact_revision = int(result.get("compact_revision", 0))
            if compact_revision:
                raise WatchCompactedError(compact_revision)
            reason = result.get("cancel_reason") or "no reason given"
            raise EtcdUnavailableError(f"etcd canceled the watch: {reason}")
        events = result.get("events", [])
        for raw in events:
            event = WatchEvent(
                "delete" if raw.get("type") == "DELETE" else "put",
                _key_value(raw["kv"]),
                _key_value(raw["prev_kv"]) if "prev_kv" in raw else None,
            )
            sink.emit(event)
            self.next_revision = event.revision + 1
        if not events and not created:
            # A progress notification: everything up to the header revision has been sent.
            self.next_revision = max(self.next_revision, header_revision + 1)
        return created


def _keepalive(sock: socket.socket) -> None:
    if sock.family == socket.AF_UNIX:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def _key_value(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(raw.get("key", "")),
        value=base64.b64decode(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        version=int(raw.get("version", 0)),
        lease=int(raw.get("lease", 0)),
    )


def _range_result(reply: dict[str, Any]) -> RangeResult:
    return RangeResult(tuple(_key_value(kv) for kv in reply.get("kvs", [])), _header_revision(reply))


def _header_revision(reply: dict[str, Any]) -> int:
    return int(reply.get("header", {}).get("revision", 0))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, FileNotFoundError):
        # A unix endpoint whose etcd stopped: etcd removes its socket on the way out.
        return "connection refused: no socket at that path"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text or type(exc).__name__
