"""Issue 4: a bad secret written straight into the store (as `kubectl edit` would) changes only the status:
every agent refuses it with the reason, keeps its last good key and traffic; a good successor is taken up."""

from __future__ import annotations

import functools
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ciphermesh.keys import KeyLine, next_key_id, parse_secret
from ciphermesh.lab.cluster import LabInfo, connect
from ciphermesh.lab.inspect import encryption_status
from ciphermesh.lab.rotation_progress import follow_rotation
from tests.support.rotation import assert_no_loss, ping_mesh, rotation_lab
from tests.support.wait import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

SECRET = "cilium-ipsec-keys"
GCM = "rfc4106(gcm(aes))"
REFUSED_WITHIN = 20.0
UNREADABLE = "the secret is missing from the store, empty or not UTF-8 text"
DWELL_SECONDS = 1.0  # traffic under each bad secret before the good successor replaces it


def _previous_id(key_id: int) -> int:
    return 15 if key_id == 1 else key_id - 1


# (what is wrong, the raw secret built from the current key line, words the status must hold)
BAD_SECRETS: list[tuple[str, Callable[[KeyLine, str], bytes], str]] = [
    ("bad hex", lambda cur, m: f"{next_key_id(cur.key_id)}+ {GCM} {'zz' * 20} 128".encode(),
     "key: not hexadecimal"),
    ("unknown algorithm", lambda cur, m: f"{next_key_id(cur.key_id)}+ rfc4106(gcm(des)) {m} 128".encode(),
     "algorithm: 'rfc4106(gcm(des))' is not a supported AEAD algorithm"),
    ("key ID 0", lambda cur, m: f"0+ {GCM} {m} 128".encode(), "zero is not a valid key ID"),
    ("key ID 16", lambda cur, m: f"16+ {GCM} {m} 128".encode(), "'16' is out of range; it must be 1..15"),
    ("same ID, other key", lambda cur, m: f"{cur.key_id}+ {GCM} {m} 128".encode(),
     "changing IPsec keys requires incrementing the key id"),
    ("ID going backwards", lambda cur, m: f"{_previous_id(cur.key_id)}+ {GCM} {m} 128".encode(),
     "goes backwards from"),
    ("other key length", lambda cur, m: f"{next_key_id(cur.key_id)}+ {GCM} {m}{'ab' * 16} 128".encode(),
     "key length must not change"),
    ("empty secret", lambda cur, m: b"", UNREADABLE),
    ("garbage text", lambda cur, m: b"please rotate the key, thanks",
     "key ID: 'please' is not a number 1..15"),
    ("garbage bytes", lambda cur, m: b"\xff\xfe\x00\x9c" + secrets.token_bytes(24), UNREADABLE),
]


def _nodes(info: LabInfo) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = encryption_status(info)["nodes"]
    return nodes


def _all_refused(info: LabInfo, key_id: int, reason: str) -> list[dict[str, Any]] | None:
    nodes = _nodes(info)
    expected = f"key secret refused, keeping key ID {key_id}: "
    ok = all(any(p.startswith(expected) and reason in p for p in node["problems"]) for node in nodes)
    return nodes if ok else None


def _problems(info: LabInfo) -> list[list[str]]:
    return [node["problems"] for node in _nodes(info)]


def _write_raw(info: LabInfo, raw: bytes) -> None:
    with connect(info) as store:
        store.backend.client.put(store.backend.keys.secret(SECRET, "kube-system"), raw)  # type: ignore[attr-defined]


def test_bad_secrets_are_refused_and_traffic_flows(tmp_path: Path) -> None:
    with rotation_lab(tmp_path, sets=("encryption.ipsec.keyRotationDuration=3s",)) as lab:
        info = lab.info
        with connect(info) as store:
            stored = store.get_key_secret(name=SECRET)
            assert stored is not None
            current = parse_secret(stored.value.keys)
        outcomes = []
        with ping_mesh(lab) as mesh:
            for what, build, reason in BAD_SECRETS:
                material = secrets.token_hex(20)
                _write_raw(info, build(current, material))
                nodes = wait_until(functools.partial(_all_refused, info, current.key_id, reason),
                                   REFUSED_WITHIN, f"every node to refuse the {what}", interval=0.2,
                                   detail=functools.partial(_problems, info))
                for node in nodes:
                    assert node["keyID"] == current.key_id, (what, node)
                    assert all(peer["outSPI"] == current.key_id for peer in node["peers"]), (what, node)
                    assert not any(material in p for p in node["problems"]), f"{what}: key material in status"
                outcomes.append((what, nodes[0]["problems"]))
                time.sleep(DWELL_SECONDS)
                good = f"{next_key_id(current.key_id)}+ {GCM} {secrets.token_hex(20)} 128"
                _write_raw(info, good.encode())
                current = parse_secret(good)
                taken = follow_rotation(info, current.key_id, start=time.monotonic(), timeout=30, poll=0.1,
                                        until=lambda progress: progress.all_sending)
                assert taken.sending is not None, f"after the {what}: {taken.last.describe()}"
            lab.wait_settled(current.key_id)
            pings = mesh.stop()
        final = _nodes(info)

    for what, problems in outcomes:
        print(f"{what}: {problems}")
    for result in pings.values():
        print(result.summary())
    assert_no_loss(pings)
    for node in final:
        assert node["keyID"] == current.key_id and node["problems"] == [], node
