"""Generated lines have Cilium's CLI shapes, use the injected randomness, and rotate 15 -> 1."""

from __future__ import annotations

import re

import pytest

from ciphermesh.keys import (
    ALGO_CHOICES,
    AeadKey,
    AuthEncKey,
    KeyLineError,
    generate_line,
    next_key_id,
    parse_line,
)


class CountingSource:
    """A deterministic random source recording the sizes asked for."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, size: int) -> bytes:
        self.sizes.append(size)
        return bytes((len(self.sizes) * 16 + i) % 256 for i in range(size))


@pytest.mark.parametrize(
    ("algo", "pattern", "sizes"),
    [
        ("rfc4106-gcm-aes", r"3\+ rfc4106\(gcm\(aes\)\) [0-9a-f]{40} 128", [20]),
        ("rfc4106-gcm-aes256", r"3\+ rfc4106\(gcm\(aes\)\) [0-9a-f]{72} 128", [36]),
        ("cbc-aes-sha256", r"3\+ hmac\(sha256\) [0-9a-f]{32} cbc\(aes\) [0-9a-f]{32}", [16, 16]),
        ("cbc-aes-sha512", r"3\+ hmac\(sha512\) [0-9a-f]{64} cbc\(aes\) [0-9a-f]{32}", [32, 16]),
    ],
)
def test_shape_per_algorithm(algo: str, pattern: str, sizes: list[int]) -> None:
    source = CountingSource()
    line = generate_line(algo, randbytes=source)
    text = line.format(reveal=True)
    assert re.fullmatch(pattern, text)
    assert source.sizes == sizes
    assert parse_line(text) == line


def test_keys_come_from_the_injected_source() -> None:
    aead = generate_line(randbytes=CountingSource()).material
    assert isinstance(aead, AeadKey)
    assert aead.key.reveal() == CountingSource()(20)
    source = CountingSource()
    expected_auth, expected_enc = source(16), source(16)
    auth_enc = generate_line("cbc-aes-sha256", randbytes=CountingSource()).material
    assert isinstance(auth_enc, AuthEncKey)
    assert (auth_enc.auth_key.reveal(), auth_enc.enc_key.reveal()) == (expected_auth, expected_enc)


def test_default_source_is_random() -> None:
    first, second = generate_line(), generate_line()
    assert first.material != second.material


@pytest.mark.parametrize("key_id", [1, 7, 15])
def test_key_id_and_plus(key_id: int) -> None:
    line = generate_line(key_id=key_id, randbytes=CountingSource())
    assert (line.key_id, line.plus) == (key_id, True)
    assert line.format().startswith(f"{key_id}+ ")


@pytest.mark.parametrize("key_id", [0, 16, -1])
def test_key_id_out_of_range(key_id: int) -> None:
    with pytest.raises(KeyLineError, match=r"^key ID: .* out of range"):
        generate_line(key_id=key_id, randbytes=CountingSource())


def test_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="unknown algorithm 'rfc4106-gcm-aes512'"):
        generate_line("rfc4106-gcm-aes512")


def test_short_random_source_is_refused() -> None:
    with pytest.raises(ValueError, match="returned 19 bytes instead of 20"):
        generate_line(randbytes=lambda size: bytes(size - 1))


def test_choices_are_the_agreed_ones() -> None:
    assert ALGO_CHOICES == ("rfc4106-gcm-aes", "rfc4106-gcm-aes256", "cbc-aes-sha256", "cbc-aes-sha512")


@pytest.mark.parametrize(("key_id", "following"), [(1, 2), (3, 4), (14, 15), (15, 1)])
def test_next_key_id_wraps_15_to_1(key_id: int, following: int) -> None:
    assert next_key_id(key_id) == following


def test_next_key_id_cycles_through_all_fifteen() -> None:
    seen, key_id = [], 3
    for _ in range(15):
        key_id = next_key_id(key_id)
        seen.append(key_id)
    assert sorted(seen) == list(range(1, 16)) and key_id == 3


@pytest.mark.parametrize("key_id", [0, 16])
def test_next_key_id_rejects_invalid(key_id: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        next_key_id(key_id)
