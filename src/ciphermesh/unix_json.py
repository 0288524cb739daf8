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


def query_json(path: Path, timeout: float = 3.0) -> dict[str, Any]:
    """The document served at `path`; OSError if nobody answers, ValueError if it is not a JSON object."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    document = json.loads(b"".join(chunks))
    if not isinstance(document, dict):
        raise ValueError(f"status at {path} is not a JSON object")
    return document
