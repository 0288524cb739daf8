"""Run one userspace IPsec engine as a process, its desired state in a file, controlled over a unix socket.

`python -m ciphermesh.datapath.userspace.ipsec.runner --state S.json --tun cm_ipsec --control C.sock`
opens (or creates) the TUN device and the raw ESP socket, applies the state and moves packets until
SIGTERM/SIGINT. The control socket takes one line per connection, `status` or `reload` (re-read the
state file and apply it), and answers one JSON line. For tests and benchmarks; the agent embeds the engine.
A state with a key an earlier runner used is refused: this process's counters would start over under it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import socketserver
import sys
import threading
from pathlib import Path
from typing import Any

from ciphermesh.datapath.desired import IPsecEngineState
from ciphermesh.datapath.userspace.ipsec.engine import (
    DEFAULT_BATCH,
    DEFAULT_SOCKET_BUFFER,
    IPsecEngine,
    open_esp_socket,
)
from ciphermesh.datapath.userspace.ipsec.state_file import (
    StateFileError,
    check_fresh,
    read_state_file,
    read_used,
    record_used,
    sa_digests,
)

_PROG = "ipsec-engine"


class _Applier:
    """Applies states from the file, refusing keys of earlier processes and recording those it takes."""

    def __init__(self, engine: IPsecEngine, state_path: Path) -> None:
        self.engine = engine
        self.state_path = state_path
        self._earlier = read_used(state_path)
        self._taken = self._earlier

    def apply(self, state: IPsecEngineState) -> None:
        """Check, record, then apply (a crash in between leaves a key recorded, never one unrecorded)."""
        check_fresh(state, self._earlier)
        self._taken = self._taken | frozenset(sa_digests(state))
        record_used(self.state_path, self._taken)
        self.engine.apply(state)


class _ControlServer(socketserver.UnixStreamServer):
    def __init__(self, path: Path, applier: _Applier) -> None:
        self.engine = applier.engine
        self.applier = applier
        super().__init__(str(path), _ControlHandler)


class _ControlHandler(socketserver.StreamRequestHandler):
    server: _ControlServer

    def handle(self) -> None:
        command = self.rfile.readline(256).decode(errors="replace").strip()
        self.wfile.write(json.dumps(self._answer(command)).encode() + b"\n")

    def _answer(self, command: str) -> dict[str, Any]:
        if command == "status":
            return self.server.engine.status()
        if command == "reload":
            try:
                self.server.applier.apply(read_state_file(self.server.applier.state_path))
            except (OSError, ValueError) as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {command[:40]!r}; use status or reload"}


def control_request(path: Path, command: str, timeout: float = 10.0) -> dict[str, Any]:
    """Send one command to a running engine's control socket and return its JSON answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(command.encode() + b"\n")
        with sock.makefile("rb") as answer:
            result: dict[str, Any] = json.loads(answer.readline())
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, required=True, help="desired state file (JSON, mode 0600)")
    parser.add_argument("--tun", required=True, help="TUN device to open, created if missing")
    parser.add_argument("--control", type=Path, required=True, help="unix socket path for status/reload")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="packets per source and wakeup")
    parser.add_argument(
        "--offload",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="open the TUN with vnet_hdr and write TCP runs as one GSO packet (default: on)",
    )
    parser.add_argument(
        "--socket-buffer", type=int, default=DEFAULT_SOCKET_BUFFER, help="raw socket buffer sizes (bytes)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        state = read_state_file(args.state)
        sock = open_esp_socket(args.socket_buffer)
    except (StateFileError, OSError, ValueError) as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return 1
    try:
        engine = IPsecEngine.open(args.tun, offload=args.offload, esp_socket=sock, batch=args.batch)
    except (OSError, ValueError) as exc:
        sock.close()
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return 1
    with engine:
        try:
            applier = _Applier(engine, args.state)
            applier.apply(state)
            args.control.unlink(missing_ok=True)
            server = _ControlServer(args.control, applier)
        except (OSError, ValueError) as exc:
            print(f"{_PROG}: {exc}", file=sys.stderr)
            return 1
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        control = threading.Thread(target=server.serve_forever, name="control", daemon=True)
        control.start()
        print(f"{_PROG}: ready on {args.tun}, control {args.control}", file=sys.stderr, flush=True)
        try:
            engine.run(stop)
        finally:
            server.shutdown()
            server.server_close()
            with contextlib.suppress(FileNotFoundError):
                args.control.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
