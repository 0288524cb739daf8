"""Cilium's rotation rules, as the agent, `key set` and `key rotate` apply them."""

from __future__ import annotations

import pytest

from ciphermesh.keys import (
    ALGO_CHOICES,
    KeyLine,
    KeyRotationError,
    check_successor,
    generate_line,
    next_key_id,
    older_key_id,
    successor_line,
)


@pytest.mark.parametrize(
    ("a", "b", "older"),
    [(3, 3, 3), (3, 4, 3), (4, 3, 3), (15, 1, 15), (1, 15, 15), (14, 15, 14), (8, 1, 1), (9, 1, 9)],
)
def test_older_key_id_wraps(a: int, b: int, older: int) -> None:
    assert older_key_id(a, b) == older


@pytest.mark.parametrize("key_id", range(1, 16))
def test_every_next_key_id_is_a_successor(key_id: int) -> None:
    current = generate_line(key_id=key_id)
    assert check_successor(current, generate_line(key_id=next_key_id(key_id))) is True
    assert older_key_id(key_id, next_key_id(key_id)) == key_id


def test_successor_rules() -> None:
    k3 = generate_line(key_id=3)
    assert check_successor(k3, k3) is False
    with pytest.raises(KeyRotationError, match="requires incrementing the key id"):
        check_successor(k3, generate_line(key_id=3))
    with pytest.raises(KeyRotationError, match="goes backwards"):
        check_successor(k3, generate_line(key_id=2))
    with pytest.raises(KeyRotationError, match="key length must not change"):
        check_successor(k3, generate_line("rfc4106-gcm-aes256", key_id=4))


def _shape(line: KeyLine) -> list[object]:
    """The line's fields after the key ID, with each hex key replaced by its length."""
    fields = line.format(reveal=True).split()[1:]
    return [len(f) if all(c in "0123456789abcdef" for c in f) and len(f) > 8 else f for f in fields]


@pytest.mark.parametrize("algo", ALGO_CHOICES)
def test_successor_line_keeps_algorithm_and_sizes(algo: str) -> None:
    current = generate_line(algo, key_id=15)
    new = successor_line(current)
    assert new.key_id == 1 and new.plus
    assert check_successor(current, new) is True
    assert _shape(new) == _shape(current)
    assert new.material != current.material
