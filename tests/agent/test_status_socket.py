"""The status socket serves the snapshot, survives a failing snapshot, and goes away on stop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ciphermesh.agent.status_socket import StatusSocketServer, query_status
from ciphermesh.unix_json import query_json


def test_serves_snapshots_and_errors(tmp_path: Path) -> None:
    state = {"n": 0}

    def snapshot() -> dict[str, Any]:
        state["n"] += 1
        if state["n"] == 2:
            raise RuntimeError("boom")
        return {"calls": state["n"], "payload": "x" * 200_000}

    path = tmp_path / "agent.sock"
    server = StatusSocketServer(path, snapshot)
    server.start()
    try:
        assert (path.stat().st_mode & 0o777) == 0o600
        first = query_status(path)
        assert first["calls"] == 1 and len(first["payload"]) == 200_000
        assert "error" in query_status(path)
        assert query_status(path)["calls"] == 3
    finally:
        server.stop()
    assert not path.exists()
    with pytest.raises(OSError):
        query_status(path, timeout=0.5)


def test_keys_only_on_a_reveal_request(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    server = StatusSocketServer(path, lambda: {"key": "<redacted>"}, revealed=lambda: {"key": "c0ffee"})
    server.start()
    try:
        assert query_status(path) == {"key": "<redacted>"}
        assert query_status(path, reveal=True) == {"key": "c0ffee"}
        # Only `true` reveals: a request that is not a JSON object, or says anything else, gets the plain one.
        assert query_json(path, request={"reveal": "yes"}) == {"key": "<redacted>"}
        assert query_json(path) == {"key": "<redacted>"}
    finally:
        server.stop()
