"""A small Kubernetes REST client on the standard library: JSON verbs and a watch with a read timeout.

Why not a client library: each of the candidates misses what a long-running agent needs (measured on the
releases PyPI has): lightkube 1.0.1 disables the read timeout of a watch, cannot ask for bookmarks and
answers 410 Gone by watching again without a resourceVersion, which loses the deletions in between;
kubernetes 37 has no read timeout unless asked per call, ignores bookmarks and raises on a second 410;
kr8s is asyncio-only and resumes a 410 from the version it last saw; kopf is an operator framework.
The backend needs six verbs and one watch loop, written once here with the timeouts it wants.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ciphermesh.store.errors import StoreError, StoreUnavailableError
from ciphermesh.store.kubernetes.token import TOKEN_REREAD_SECONDS, TokenFile

JSONObject = dict[str, Any]

# Status codes the backend tells apart.
UNAUTHORIZED = 401
NOT_FOUND = 404
CONFLICT = 409
GONE = 410
TOO_MANY_REQUESTS = 429
_MAX_RETRY_AFTER = 0.5


class KubeApiError(StoreError):
    """The API server refused a request; `code` is its HTTP status, `reason` its Status reason."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"kube-apiserver: {code} {reason}: {message}")
        self.code = code
        self.reason = reason


class KubeUnavailableError(StoreUnavailableError):
    """The API server cannot be reached (refused, reset, timed out)."""


@dataclass(frozen=True)
class KubeConfig:
    """Where the API server is and how to authenticate: a client certificate, a bearer token, or a
    token file (re-read while the client runs, as a ServiceAccount's projected token rotates)."""

    server: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    token_file: str | None = None

    @classmethod
    def from_file(cls, path: Path) -> KubeConfig:
        """The current context of a kubeconfig whose credentials are files or a token."""
        try:
            raw = yaml.safe_load(Path(path).read_text())
            context = next(c["context"] for c in raw["contexts"] if c["name"] == raw["current-context"])
            cluster = next(c["cluster"] for c in raw["clusters"] if c["name"] == context["cluster"])
            user = next(u["user"] for u in raw["users"] if u["name"] == context["user"])
            return cls(
                server=cluster["server"],
                ca_file=cluster.get("certificate-authority"),
                cert_file=user.get("client-certificate"),
                key_file=user.get("client-key"),
                token=user.get("token"),
                token_file=user.get("tokenFile"),
            )
        except OSError as exc:
            raise StoreError(f"kubeconfig {path}: {exc.strerror or exc}") from None
        except (yaml.YAMLError, KeyError, TypeError, StopIteration):
            raise StoreError(f"kubeconfig {path}: no current context with a cluster and a user") from None

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


class WatchHandles:
    """Open watch connections, so that stopping a stream closes them now, not a read timeout later."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: set[http.client.HTTPSConnection] = set()
        self._closed = False

    def add(self, conn: http.client.HTTPSConnection) -> bool:
        """Track `conn`; False (and `conn` closed) once `close_all` has run."""
        with self._lock:
            if not self._closed:
                self._conns.add(conn)
                return True
        conn.close()
        return False

    def discard(self, conn: http.client.HTTPSConnection) -> None:
        with self._lock:
            self._conns.discard(conn)

    def close_all(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, set()
        for conn in conns:
            if conn.sock is not None:
                # shutdown wakes a reader blocked in recv, which close alone does not.
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)


class KubeClient:
    """JSON requests to one API server; one connection per thread, re-opened after any failure."""

    def __init__(
        self, config: KubeConfig, *, timeout: float = 5.0, token_reread: float = TOKEN_REREAD_SECONDS
    ) -> None:
        url = urllib.parse.urlsplit(config.server)
        if url.scheme != "https" or url.hostname is None:
            raise StoreError(f"API server {config.server!r} is not https://HOST:PORT")
        self._host = url.hostname
        self._port = url.port or 443
        self._context = config.ssl_context()
        self._headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if config.token is not None:
            self._headers["Authorization"] = f"Bearer {config.token}"
        self._token_file = (
            TokenFile(Path(config.token_file), reread=token_reread) if config.token_file is not None else None
        )
        self.timeout = timeout
        self._local = threading.local()
        self.server = config.server

    def _connect(self, timeout: float) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self._host, self._port, context=self._context, timeout=timeout)

    def _request_headers(self) -> dict[str, str]:
        if self._token_file is None:
            return self._headers
        return {**self._headers, "Authorization": f"Bearer {self._token_file.token()}"}

    def _rotated(self, status: int) -> bool:
        """After a 401, whether the token file holds another token now (then the request is sent again)."""
        return status == UNAUTHORIZED and self._token_file is not None and self._token_file.refresh()

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> JSONObject:
        """The decoded JSON answer; `KubeApiError` for a refusal, `KubeUnavailableError` if unreachable.
        429 Too Many Requests (also what a starting server answers) is retried after its Retry-After,
        as client-go does, for up to the client's timeout."""
        target = path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = json.dumps(body).encode() if body is not None else None
        deadline = time.monotonic() + self.timeout
        while True:
            status, retry_after, payload = self._send(method, target, data)
            if self._rotated(status):
                status, retry_after, payload = self._send(method, target, data)
            if status != TOO_MANY_REQUESTS or time.monotonic() + retry_after > deadline:
                return _decode(status, payload)
            time.sleep(retry_after)

    def _send(self, method: str, target: str, data: bytes | None) -> tuple[int, float, bytes]:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        retried = False
        while True:
            if conn is None:
                conn = self._connect(self.timeout)
                self._local.conn = conn
            try:
                conn.request(method, target, body=data, headers=self._request_headers())
                response = conn.getresponse()
                payload = response.read()
                retry_after = response.getheader("Retry-After") or ""
                wait = float(retry_after) if retry_after.isdigit() else _MAX_RETRY_AFTER
                return response.status, min(wait, _MAX_RETRY_AFTER), payload
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = self._local.conn = None
                # A kept-alive connection the server closed fails once; a fresh one tells the truth.
                if retried or isinstance(exc, TimeoutError | ConnectionRefusedError):
                    raise KubeUnavailableError(f"kube-apiserver {self.server} unreachable: {exc}") from None
                retried = True

    def watch(
        self,
        path: str,
        params: Mapping[str, str],
        *,
        read_timeout: float,
        handles: WatchHandles,
    ) -> Iterator[JSONObject]:
        """The events of one watch request, until the server ends it; no read may take `read_timeout`.
        `handles.close_all()` ends it at once from another thread."""
        conn = self._connect(read_timeout)
        if not handles.add(conn):
            return
        try:
            try:
                conn.request(
                    "GET",
                    path + "?" + urllib.parse.urlencode({**params, "watch": "true"}),
                    headers=self._request_headers(),
                )
                response = conn.getresponse()
                if response.status != 200:
                    # A 401 re-reads the token file, so the caller's next attempt sends the new one.
                    self._rotated(response.status)
                    _decode(response.status, response.read())
                    return
                while line := response.readline():
                    if line.strip():
                        yield json.loads(line)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise KubeUnavailableError(f"watch on {path} broke: {exc}") from None
        finally:
            handles.discard(conn)
            conn.close()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _decode(status: int, payload: bytes) -> JSONObject:
    try:
        body = json.loads(payload) if payload else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if status >= 300:
        message = str(body.get("message") or payload[:200].decode(errors="replace")).replace("\n", " ")
        raise KubeApiError(status, str(body.get("reason") or "Error"), message)
    return body
