"""Key management against a real etcd: set, rotate, refusals, and the operator's scheduled rotation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ciphermesh.keys import KeyLineError, KeyRotationError, generate_line, parse_secret
from ciphermesh.operator.key_rotation import AutoRotator
from ciphermesh.operator.key_secret import NoKeySecretError, current_key, rotate_key, set_key
from ciphermesh.store.etcd.process import start_etcd, stop_etcd
from ciphermesh.store.model import Node
from ciphermesh.store.open import open_store
from ciphermesh.store.store import Store

SECRET = "cilium-ipsec-keys"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    info = start_etcd(tmp_path)
    try:
        with open_store(info.client_url, "test") as connected:
            yield connected
    finally:
        stop_etcd(tmp_path)


def test_set_rotate_show(store: Store) -> None:
    with pytest.raises(NoKeySecretError):
        current_key(store, SECRET)
    first = generate_line(key_id=15)
    set_key(store, SECRET, first.format(reveal=True))
    assert current_key(store, SECRET).line == first
    rotated = rotate_key(store, SECRET)
    assert rotated.key_id == 1
    stored = current_key(store, SECRET)
    # The stored text is the exact line format the seed's shell recipe reads back.
    keyid, algo, psk, keysize = stored.text.split()
    assert (keyid, algo, keysize) == ("1+", "rfc4106(gcm(aes))", "128") and len(psk) == 40
    assert parse_secret(stored.text) == rotated
    recipe = f"{int(keyid.rstrip('+')) + 1}+ {algo} {'ab' * 20} {keysize}"
    assert set_key(store, SECRET, recipe).line.key_id == 2


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("3+ rfc4106(gcm(aes)) " + "11" * 20 + " 128", KeyRotationError),
        ("2+ rfc4106(gcm(aes)) " + "11" * 20 + " 128", KeyRotationError),
        ("4+ rfc4106(gcm(aes)) " + "11" * 36 + " 128", KeyRotationError),
        ("4+ rfc4106(gcm(aes)) xyz 128", KeyLineError),
        ("16+ rfc4106(gcm(aes)) " + "11" * 20 + " 128", KeyLineError),
    ],
)
def test_bad_lines_change_nothing(store: Store, line: str, error: type[Exception]) -> None:
    good = generate_line(key_id=3)
    set_key(store, SECRET, good.format(reveal=True))
    before = current_key(store, SECRET)
    with pytest.raises(error):
        set_key(store, SECRET, line)
    after = current_key(store, SECRET)
    assert (after.text, after.revision) == (before.text, before.revision)


def test_scheduled_rotation_waits_for_the_interval_and_every_node(store: Store) -> None:
    now = [0.0]
    set_key(store, SECRET, generate_line(key_id=3).format(reveal=True))
    registration = store.register_node(Node("node-1", "172.18.0.2", "b" * 36, key_id=3, agent="ready"))
    try:
        rotator = AutoRotator(store, SECRET, interval=60, clock=lambda: now[0])
        assert rotator.tick() is None
        now[0] = 59
        assert rotator.tick() is None
        now[0] = 60
        new = rotator.tick()
        assert new is not None and new.key_id == 4
        now[0] = 200
        # node-1 still publishes key 3: no second rotation until it has moved.
        assert rotator.tick() is None
        registration.update(lambda n: replace(n, key_id=4))
        assert rotator.tick() is not None
        assert current_key(store, SECRET).line.key_id == 5
    finally:
        registration.close()


def test_set_key_recovers_from_a_broken_secret(store: Store) -> None:
    set_key(store, SECRET, generate_line(key_id=3).format(reveal=True))
    registration = store.register_node(Node("node-1", "172.18.0.2", "b" * 36, key_id=3, agent="ready"))
    try:
        for broken in (b"", b"\xff\xfe", b"garbage"):
            # What `kubectl edit` can leave behind; the agents keep key 3 and say why.
            store.backend.client.put(store.backend.keys.secret(SECRET, "kube-system"), broken)  # type: ignore[attr-defined]
            with pytest.raises(KeyRotationError, match="in use by node-1"):
                set_key(store, SECRET, generate_line(key_id=3).format(reveal=True))
            with pytest.raises(KeyRotationError, match="goes backwards from 3"):
                set_key(store, SECRET, generate_line(key_id=2).format(reveal=True))
            with pytest.raises((KeyLineError, NoKeySecretError)):
                rotate_key(store, SECRET)
            good = generate_line(key_id=4)
            assert set_key(store, SECRET, good.format(reveal=True)).line == good
            assert current_key(store, SECRET).line == good
            set_key(store, SECRET, generate_line(key_id=5).format(reveal=True))
            registration.update(lambda n: replace(n, key_id=3))
    finally:
        registration.close()
