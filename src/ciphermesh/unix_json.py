"""One JSON document over a unix socket: what every status socket (agent, engines) serves and reads."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any


def encode_snapshot(snapshot: Callable[[], dict[str, Any]], log: logging.Logger, owner: str) -> bytes:
    """`snapshot()` as JSON; a failing snapshot becomes an error document, so status never stops `owner`."""
    try:
        return json.dumps(snapshot()).encode()
    except Exception:
        log.exception("status snapshot failed")
        return json.dumps({"error": f"status snapshot failed; see the {owner}'s log"}).encode()


def read_request(client: socket.socket, timeout: float = 1.0) -> dict[str, Any]:
    """The one-line JSON request a client sent before reading; {} if it sent none, or anything else."""
    client.settimeout(timeout)
    data = b""
    try:
        while len(data) < 4096 and b"\n" not in data and (chunk := client.recv(4096)):
            data += chunk
        request = json.loads(data.split(b"\n", 1)[0]) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return request if isinstance(request, dict) else {}


def query_json(path: Path, timeout: float = 3.0, request: dict[str, Any] | None = None) -> dict[str, Any]:
    """The document served at `path`, after sending `request` if given (one JSON line).

    OSError if nobody answers, ValueError if it is not a JSON object.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        if request is not None:
            sock.sendall(json.dumps(request).encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    document = json.loads(b"".join(chunks))
    if not isinstance(document, dict):
        raise ValueError(f"status at {path} is not a JSON object")
    return document
