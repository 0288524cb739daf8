"""Keys as wg(8) makes them: our public keys agree with `wg pubkey`, ours are accepted by `wg`."""

from __future__ import annotations

import base64
import random
import shutil
import subprocess

import pytest

from ciphermesh.wireguard.keys import InvalidKeyError, PresharedKey, PrivateKey, PublicKey, clamp

WG = shutil.which("wg")
needs_wg = pytest.mark.skipif(WG is None, reason="wireguard-tools (wg) is not installed")


def _wg(*args: str, stdin: str = "") -> str:
    assert WG is not None
    return subprocess.run([WG, *args], input=stdin, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.interop
@needs_wg
def test_public_key_agrees_with_wg_pubkey_for_wg_genkey_keys() -> None:
    for _ in range(5):
        private = _wg("genkey")
        assert PrivateKey.from_base64(private).public_key().to_base64() == _wg("pubkey", stdin=private + "\n")


@pytest.mark.interop
@needs_wg
def test_generated_keys_are_clamped_and_accepted_by_wg() -> None:
    rng = random.Random(3)
    for _ in range(5):
        key = PrivateKey.generate(rng.randbytes)
        raw = key.reveal()
        assert raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40
        assert _wg("pubkey", stdin=key.to_base64() + "\n") == key.public_key().to_base64()


def test_unclamped_private_key_gives_the_same_public_key() -> None:
    raw = bytes(range(1, 33))
    assert clamp(raw) != raw
    assert PrivateKey(raw).public_key() == PrivateKey(clamp(raw)).public_key()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "A" * 44,
        base64.b64encode(bytes(31)).decode(),
        base64.b64encode(bytes(33)).decode(),
        "!" * 43 + "=",
    ],
)
def test_malformed_keys_give_a_clear_error_without_the_key(text: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        PrivateKey.from_base64(text)
    assert "base64" in str(info.value) or "32 bytes" in str(info.value)
    if len(text) > 4:
        assert text not in str(info.value)


def test_secrets_are_redacted() -> None:
    key = PrivateKey.generate(random.Random(1).randbytes)
    psk = PresharedKey.generate(random.Random(2).randbytes)
    for secret in (key, psk):
        assert secret.to_base64() not in repr(secret)
        assert secret.to_base64() not in str(secret)
        assert "redacted" in repr(secret)
    public = key.public_key()
    assert public.to_base64() in repr(public)
    assert PublicKey.from_base64(public.to_base64()) == public
    assert PresharedKey.zero().is_zero() and not psk.is_zero()
