"""A breakable TCP forwarder on 127.0.0.1 for store tests: `cut` drops every connection and refuses new ones
until `restore`, as a partitioned network would; the upstream is etcd's unix socket or a loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


def unix_upstream(url: str) -> Callable[[], socket.socket]:
    """Connections to `unix://PATH` (the lab's etcd)."""
    path = url.removeprefix("unix://")

    def connect() -> socket.socket:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(path)
        except OSError:
            upstream.close()
            raise
        return upstream

    return connect


def loopback_upstream(port: int) -> Callable[[], socket.socket]:
    """Connections to 127.0.0.1:`port` (a kube-apiserver)."""

    def connect() -> socket.socket:
        upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
        upstream.settimeout(None)
        return upstream

    return connect


class CuttableProxy:
    """Forwards 127.0.0.1:`port` to what `connect_upstream` opens."""

    def __init__(self, connect_upstream: Callable[[], socket.socket]) -> None:
        self._connect = connect_upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._open = True
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = self._connect()
            except OSError:
                client.close()
                continue
            with self._lock:
                # A connection accepted while `cut` ran must not outlive it (it once carried a watch on).
                if not self._open:
                    client.close()
                    upstream.close()
                    continue
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            self._open = False
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        with self._lock:
            self._open = True

    def close(self) -> None:
        self.cut()
        self._listener.close()
