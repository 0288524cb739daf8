"""The key file follower on the kubelet's real atomic-writer layout: swaps seen, bad ones refused."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ciphermesh.agent.key_file import KeyFileFollower, ipsec_key_file, mounted_key_file
from ciphermesh.config import load_values
from ciphermesh.keys import KeyLine, generate_line, parse_secret, successor_line
from ciphermesh.store.etcd.backend import EtcdBackend
from ciphermesh.store.etcd.client import EtcdClient
from ciphermesh.store.kubernetes.backend import KubernetesBackend
from ciphermesh.store.kubernetes.client import KubeClient, KubeConfig
from ciphermesh.store.store import Store
from tests.support.atomic_writer import kubelet_write

DEADLINE = 15.0


def line_text(line: KeyLine) -> bytes:
    return line.format(reveal=True).encode()


@pytest.fixture
def follower(tmp_path: Path) -> Iterator[tuple[KeyFileFollower, threading.Event]]:
    changed = threading.Event()
    follower = KeyFileFollower(tmp_path / "ipsec" / "keys", "cilium-ipsec-keys", changed)
    yield follower, changed
    follower.stop()


def key_id(follower: KeyFileFollower) -> int | None:
    secret = follower.records.get("cilium-ipsec-keys")
    return None if secret is None else parse_secret(secret.keys).key_id


def wait_for(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"not within {DEADLINE:g} s: {what}"
        time.sleep(0.05)


def test_a_swapped_key_is_seen_within_seconds(
    tmp_path: Path, follower: tuple[KeyFileFollower, threading.Event]
) -> None:
    keys, changed = follower
    first = generate_line(key_id=3)
    kubelet_write(tmp_path / "ipsec", {"keys": line_text(first)})
    keys.start()
    assert keys.synced.wait(DEADLINE)
    assert key_id(keys) == 3 and keys.errors() == [] and changed.is_set()
    second = successor_line(first)
    kubelet_write(tmp_path / "ipsec", {"keys": line_text(second)})
    wait_for("key ID 4 read from the swapped directory", lambda: key_id(keys) == 4)
    assert keys.records["cilium-ipsec-keys"].keys == line_text(second).decode()
    assert len(list((tmp_path / "ipsec").glob("..20*"))) == 1  # the old directory is gone


def test_a_malformed_swap_keeps_the_key_says_why_once_and_a_fixed_one_recovers(
    tmp_path: Path, follower: tuple[KeyFileFollower, threading.Event], caplog: pytest.LogCaptureFixture
) -> None:
    keys, _ = follower
    first = generate_line(key_id=3)
    kubelet_write(tmp_path / "ipsec", {"keys": line_text(first)})
    keys.start()
    assert keys.synced.wait(DEADLINE)
    # A key of the wrong length: the parser refuses it, and its material must not be repeated.
    material = "c0ffee" * 4
    with caplog.at_level(logging.WARNING, logger="ciphermesh.agent.key_file"):
        kubelet_write(tmp_path / "ipsec", {"keys": f"4+ rfc4106(gcm(aes)) 0x{material} 128".encode()})
        wait_for("the malformed file reported", lambda: bool(keys.errors()))
        (error,) = keys.errors()
        path = tmp_path / "ipsec" / "keys"
        assert error.startswith(f"key file {path}: line 1, key: ") and error.endswith("; keeping key ID 3")
        assert key_id(keys) == 3
        time.sleep(3 * 1.0)  # three more polls of the same bad file: still one log line
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [error]
        kubelet_write(tmp_path / "ipsec", {"keys": b"\xff\xfe not text"})
        wait_for("the non-UTF-8 file reported", lambda: "not UTF-8 text" in "".join(keys.errors()))
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2  # a new reason: logged
    assert material not in caplog.text and material not in "".join(keys.errors())
    second = successor_line(first)
    kubelet_write(tmp_path / "ipsec", {"keys": line_text(second)})
    wait_for("the fixed key taken", lambda: key_id(keys) == 4)
    assert keys.errors() == []


def test_a_missing_file_says_so_until_the_secret_is_mounted(
    tmp_path: Path, follower: tuple[KeyFileFollower, threading.Event]
) -> None:
    keys, _ = follower
    keys.start()
    assert keys.synced.wait(DEADLINE)
    path = tmp_path / "ipsec" / "keys"
    assert keys.records == {}
    assert keys.errors() == [f"key file {path}: No such file or directory; no key yet"]
    kubelet_write(tmp_path / "ipsec", {"keys": line_text(generate_line(key_id=7))})
    wait_for("the mounted key taken", lambda: key_id(keys) == 7)
    assert keys.errors() == []
    (tmp_path / "ipsec" / "..data").unlink()  # the volume's content gone: keep the key, say so
    wait_for("the vanished file reported", lambda: bool(keys.errors()))
    assert keys.errors() == [f"key file {path}: No such file or directory; keeping key ID 7"]
    assert key_id(keys) == 7


def test_the_key_source_is_the_file_only_on_kubernetes_with_ipsec() -> None:
    ipsec = load_values(sets=["encryption.enabled=true", "encryption.ipsec.mountPath=/run/k"])
    assert ipsec_key_file(ipsec) == Path("/run/k/keys")
    # Neither backend connects before its first request, so no server is needed to tell them apart.
    kube = Store(KubernetesBackend(KubeClient(KubeConfig(server="https://127.0.0.1:1")), "c"))
    etcd = Store(EtcdBackend(EtcdClient("http://127.0.0.1:1"), "c"))
    assert mounted_key_file(kube, ipsec, "ipsec") == Path("/run/k/keys")
    assert mounted_key_file(kube, ipsec, "wireguard") is None
    assert mounted_key_file(etcd, ipsec, "ipsec") is None
