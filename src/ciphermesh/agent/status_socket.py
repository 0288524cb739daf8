"""The agent's status on a unix socket: connect, read one JSON document, done."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ciphermesh.unix_json import encode_snapshot, query_json

log = logging.getLogger(__name__)


class StatusSocketServer:
    """Serves `snapshot()` as JSON to every client of a unix socket (mode 0600: status names peers)."""

    def __init__(self, path: Path, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._path = path
        self._snapshot = snapshot
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        os.chmod(path, 0o600)
        self._sock.listen(16)
        self._thread = threading.Thread(target=self._serve, name="status-socket", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            with client:
                body = encode_snapshot(self._snapshot, log, "agent")
                with contextlib.suppress(OSError):
                    client.sendall(body)


def query_status(path: Path, timeout: float = 3.0) -> dict[str, Any]:
    """The JSON the agent at `path` serves; OSError or ValueError if it does not answer."""
    return query_json(path, timeout)
