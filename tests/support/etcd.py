"""A real etcd in a temp dir, and a TCP proxy to its unix socket that can cut a client off (fixtures in
tests/conftest.py)."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

from ciphermesh.store.etcd.process import EtcdInfo, start_etcd, stop_etcd


class EtcdFixture:
    """A running etcd for one test; `restart` keeps its data and its socket."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.info: EtcdInfo = start_etcd(state_dir)

    @property
    def url(self) -> str:
        return self.info.client_url

    def stop(self) -> None:
        stop_etcd(self.state_dir)

    def start(self) -> None:
        self.info = start_etcd(self.state_dir)

    def restart(self) -> None:
        self.stop()
        self.start()




class TcpProxy:
    """Forwards 127.0.0.1:<port> to etcd's `unix://PATH`; `cut` drops every connection, refuses new ones."""

    def __init__(self, target_url: str) -> None:
        self._target = target_url.removeprefix("unix://")
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open = threading.Event()
        self._open.set()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self._target)
            except OSError:
                upstream.close()
                client.close()
                continue
            with self._lock:
                # A connection accepted while `cut` ran must not outlive it (it once carried a watch on).
                if not self._open.is_set():
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
            self._open.clear()
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self.cut()
        self._listener.close()

