"""The agent's status on a unix socket: connect, send one request line, read one JSON document, done.

The request `{"reveal": true}` asks for the status with the SAs' keys; any other (or none) for the plain
status, which never holds a key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ciphermesh.unix_json import encode_snapshot, query_json, read_request

log = logging.getLogger(__name__)


class StatusSocketServer:
    """Serves `snapshot()` as JSON to every client of a unix socket (mode 0600: status names peers).

    `revealed()`, if given, answers a reveal request; without it such a request gets the plain snapshot.
    """

    def __init__(
        self, path: Path, snapshot: Callable[[], dict[str, Any]],
        revealed: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._path = path
        self._snapshot = snapshot
        self._revealed = revealed
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
                # Read the request in any case: unread bytes would make the client's read fail (ECONNRESET).
                reveal = read_request(client).get("reveal") is True
                snapshot = self._revealed if reveal and self._revealed is not None else self._snapshot
                body = encode_snapshot(snapshot, log, "agent")
                with contextlib.suppress(OSError):
                    client.sendall(body)


def query_status(path: Path, timeout: float = 3.0, *, reveal: bool = False) -> dict[str, Any]:
    """The JSON the agent at `path` serves (SA keys only with `reveal`); OSError or ValueError if silent."""
    return query_json(path, timeout, {"reveal": reveal})
