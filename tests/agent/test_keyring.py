"""The agent's keyring: Cilium's rotation rules, the grace period, and refusal that keeps the last key."""

from __future__ import annotations

import pytest

from ciphermesh.agent.keyring import KeyRing
from ciphermesh.keys import KeyLine, generate_line

K3 = generate_line(key_id=3)
K4 = generate_line(key_id=4)
K15 = generate_line(key_id=15)
K1 = generate_line(key_id=1)


def _text(line: KeyLine) -> str:
    return line.format(reveal=True)


def test_first_key_then_rotation_keeps_the_old_one_for_its_grace_period() -> None:
    ring = KeyRing(grace_seconds=300)
    assert ring.update(None, 0) is False and ring.error == "no key secret in the store yet"
    assert ring.update(_text(K3), 0) is True
    assert ring.current_id == 3 and set(ring.keys) == {3} and not ring.rotating
    assert ring.update(_text(K3), 1) is False
    assert ring.update(_text(K4), 10) is True
    assert ring.current_id == 4 and set(ring.keys) == {3, 4} and ring.rotating
    assert ring.next_expiry() == 310
    assert ring.expire(309) == [] and set(ring.keys) == {3, 4}
    assert ring.expire(310) == [3] and set(ring.keys) == {4} and not ring.rotating


def test_rotation_across_the_wrap() -> None:
    ring = KeyRing(grace_seconds=5)
    ring.update(_text(K15), 0)
    assert ring.update(_text(K1), 1) is True
    assert ring.current_id == 1 and set(ring.keys) == {15, 1}


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("3+ rfc4106(gcm(aes)) zz 128", "not hexadecimal"),
        ("3+ rfc4106(gcm(aes)) " + "00" * 20, "ICV"),
        ("16+ rfc4106(gcm(aes)) " + "00" * 20 + " 128", "key ID"),
        ("3+ rfc4106(gcm(aes)) " + "00" * 20 + " 128", "requires incrementing the key id"),
        ("2+ rfc4106(gcm(aes)) " + "00" * 20 + " 128", "goes backwards"),
        ("4+ rfc4106(gcm(aes)) " + "00" * 36 + " 128", "key length must not change"),
        ("4+ unknown(algo) " + "00" * 20 + " 128", "algorithm"),
    ],
)
def test_bad_secrets_keep_the_last_good_key(secret: str, reason: str) -> None:
    ring = KeyRing(grace_seconds=300)
    ring.update(_text(K3), 0)
    assert ring.update(secret, 1) is False
    assert ring.current == K3 and set(ring.keys) == {3}
    assert ring.error is not None and reason in ring.error
    assert ring.error.startswith("key secret refused, keeping key ID 3")
    assert "00000000" not in ring.error
    assert ring.update(_text(K4), 2) is True and ring.error is None


def test_a_bad_first_secret_holds_no_key() -> None:
    ring = KeyRing(grace_seconds=300)
    assert ring.update("garbage", 0) is False
    assert ring.current is None and ring.keys == {}
    assert ring.error is not None and ring.error.startswith("key secret refused, keeping no key")


def test_a_secret_that_disappears_keeps_the_key_and_says_so() -> None:
    ring = KeyRing(grace_seconds=300)
    ring.update(_text(K3), 0)
    assert ring.update(None, 1) is False
    assert ring.current == K3 and set(ring.keys) == {3}
    assert ring.error == (
        "key secret refused, keeping key ID 3: the secret is missing from the store, empty or not UTF-8 text"
    )
    assert ring.update(_text(K4), 2) is True and ring.error is None
