"""The userspace WireGuard engine's control socket: connect, read one JSON status document.

The default path carries the network namespace's inode, because the same interface name (cilium_wg0)
runs in every node namespace of a lab while /run is shared; run `show` in the engine's namespace
(`ip netns exec`), or pass the same `--socket` to both commands.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ciphermesh.unix_json import encode_snapshot, query_json

log = logging.getLogger(__name__)
RUN_DIR = Path("/run/ciphermesh/wireguard")
_ANSWER_TIMEOUT = 1.0


def default_socket_path(ifname: str) -> Path:
    namespace = os.stat("/proc/self/ns/net").st_ino
    return RUN_DIR / f"netns-{namespace}" / f"{ifname}.sock"


class ControlServer:
    """A non-blocking listener the engine's loop polls; every client gets `snapshot()` as JSON."""

    def __init__(self, path: Path, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        self._snapshot = snapshot
        self._made_directory = not path.parent.exists()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists():
            self._refuse_if_live(path)
            path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind(str(path))
            os.chmod(path, 0o600)
            self._sock.listen(16)
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise

    @staticmethod
    def _refuse_if_live(path: Path) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                return  # a stale socket from an engine that did not exit cleanly
        raise FileExistsError(f"another engine is serving {path}")

    def fileno(self) -> int:
        return self._sock.fileno()

    def handle(self) -> None:
        """Answer every client that is waiting."""
        while True:
            try:
                client, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                log.exception("control socket accept failed")
                return
            with client:
                client.settimeout(_ANSWER_TIMEOUT)
                body = encode_snapshot(self._snapshot, log, "engine")
                with contextlib.suppress(OSError):
                    client.sendall(body)

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self._made_directory:
            with contextlib.suppress(OSError):  # another engine of this namespace may still use it
                self.path.parent.rmdir()


def query(path: Path, timeout: float = 3.0) -> dict[str, Any]:
    """The status the engine at `path` serves; OSError or ValueError if it does not answer."""
    return query_json(path, timeout)
