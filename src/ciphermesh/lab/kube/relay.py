"""The apiserver relay: the stand-in for a node's route to the control plane.

A real node reaches its API server over the network; a lab node's namespace has only its underlay, and
the API server listens on the host's loopback. One lab process (`ciphermesh lab relay --lab NAME`, internal)
holds a listening socket on 127.0.0.1:<port> inside each node's network namespace and forwards every
connection to the host's 127.0.0.1:<port>. So `https://127.0.0.1:<port>` and the admin kubeconfig work the
same on the host, in `lab exec` and in the lab kubelet's pods. Each listener is opened by this process's
main thread after setns into the node's namespace (a socket stays in the namespace it was made in) and the
thread returns to the host's: no `ip netns exec` per socket, one process to start, find and stop.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ciphermesh.lab import netns
from ciphermesh.lab.info import LabError
from ciphermesh.lab.processes import read_pidfile, start_daemon
from ciphermesh.lab.state import LabPaths

RELAY = "relay"
CHECK_INTERVAL = 1.0
_CONNECT_TIMEOUT = 5.0
_CHUNK = 65536


@dataclass
class _Listener:
    """A node namespace's listening socket and the namespace's identity when it was opened."""

    sock: socket.socket
    inode: tuple[int, int]


def _identity(namespace: str) -> tuple[int, int] | None:
    try:
        info = os.stat(netns.netns_path(namespace))
    except OSError:
        return None
    return info.st_dev, info.st_ino


class Relay:
    """Listens on 127.0.0.1:`port` in each of `namespaces`, forwarding to the host's 127.0.0.1:`port`."""

    def __init__(self, namespaces: Sequence[str], port: int) -> None:
        self._namespaces = tuple(namespaces)
        self._port = port
        self._listeners: dict[str, _Listener] = {}

    def converge(self) -> list[str]:
        """Open a listener in every namespace that has none or was made anew (a repaired node); the
        namespaces that do not exist (yet) are returned and tried again at the next call."""
        missing = []
        for namespace in self._namespaces:
            identity = _identity(namespace)
            current = self._listeners.get(namespace)
            if current is not None and current.inode == identity:
                continue
            if current is not None:
                current.sock.close()  # its accept thread ends with it
                del self._listeners[namespace]
            if identity is None:
                missing.append(namespace)
                continue
            try:
                with netns.entered(namespace):
                    sock = socket.create_server(("127.0.0.1", self._port), backlog=128)
            except (OSError, netns.NetnsError):
                missing.append(namespace)
                continue
            self._listeners[namespace] = _Listener(sock, identity)
            accept = threading.Thread(target=self._accept, args=(sock,), name=namespace, daemon=True)
            accept.start()
        return missing

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.converge()
            stop.wait(CHECK_INTERVAL)
        for listener in self._listeners.values():
            listener.sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        # This thread never entered a node's namespace: the upstream connection is the host's loopback.
        try:
            upstream = socket.create_connection(("127.0.0.1", self._port), timeout=_CONNECT_TIMEOUT)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        back.start()
        _pipe(client, upstream)
        back.join()
        client.close()
        upstream.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy until `src` ends, then pass the end on (half-close), as a route would carry a FIN."""
    with contextlib.suppress(OSError):
        while data := src.recv(_CHUNK):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
    with contextlib.suppress(OSError):
        src.shutdown(socket.SHUT_RD)


def relay_pid(paths: LabPaths) -> int | None:
    return read_pidfile(paths.pids / f"{RELAY}.pid")


def reaches_apiserver(namespace: str, port: int) -> bool:
    """Whether a TCP connection from inside `namespace` to 127.0.0.1:`port` gets through."""
    try:
        with netns.entered(namespace), socket.create_connection(("127.0.0.1", port), timeout=2.0):
            return True
    except (OSError, netns.NetnsError):
        return False


def ensure_relay(paths: LabPaths, argv: Sequence[str], namespaces: Sequence[str], port: int,
                 timeout: float) -> bool:
    """Start the relay (`argv`) unless it runs; wait until every node namespace reaches the API server
    through it; True if it was started."""
    started = False
    pid = relay_pid(paths)
    if pid is None:
        pid = start_daemon(argv, pidfile=paths.pids / f"{RELAY}.pid", log=paths.logs / f"{RELAY}.log",
                           marker=paths.marker)
        started = True
    deadline = time.monotonic() + timeout
    while unreached := [ns for ns in namespaces if not reaches_apiserver(ns, port)]:
        if relay_pid(paths) != pid:
            raise LabError(f"lab {paths.name}: the apiserver relay exited (see {paths.logs / 'relay.log'})")
        if time.monotonic() > deadline:
            raise LabError(f"lab {paths.name}: {', '.join(unreached)} do not reach the API server at "
                           f"127.0.0.1:{port} through the relay after {timeout:.0f} s "
                           f"(see {paths.logs / 'relay.log'})")
        time.sleep(0.2)
    return started
