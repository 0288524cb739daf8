"""SecretBytes keeps key material out of every text form unless revealed."""

from __future__ import annotations

import copy
import dataclasses
import logging

import pytest

from ciphermesh.keys import AeadKey, KeyLine, SecretBytes

KEY = bytes.fromhex("44434241343332312423222114131211f4f3f2f1")


def test_every_text_form_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    secret = SecretBytes(KEY)
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("key %s %r", secret, secret)
    texts = [
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        f"{secret:x}",
        f"{secret:>30}",
        caplog.text,
    ]
    for text in texts:
        assert "<redacted 20 bytes>" in text
        assert KEY.hex() not in text and KEY.hex()[:8] not in text


def test_containers_and_dataclasses_stay_redacted() -> None:
    line = KeyLine(3, True, AeadKey("rfc4106(gcm(aes))", SecretBytes(KEY), 128))
    for text in (repr(line), str(dataclasses.asdict(line)), str([line.material])):
        assert "<redacted 20 bytes>" in text
        assert KEY.hex()[:8] not in text


def test_reveal_and_len() -> None:
    secret = SecretBytes(bytearray(KEY))
    assert secret.reveal() == KEY and isinstance(secret.reveal(), bytes)
    assert len(secret) == 20


def test_equality_and_hash_follow_the_bytes() -> None:
    assert SecretBytes(KEY) == SecretBytes(bytes(KEY))
    assert hash(SecretBytes(KEY)) == hash(SecretBytes(bytes(KEY)))
    assert SecretBytes(KEY) != SecretBytes(KEY[:-1] + b"\x00")
    assert SecretBytes(KEY) != SecretBytes(KEY[:-1])
    assert SecretBytes(KEY) != KEY
    assert len({SecretBytes(KEY), SecretBytes(bytes(KEY)), SecretBytes(b"other")}) == 2


def test_immutable_and_not_convertible_by_accident() -> None:
    secret = SecretBytes(KEY)
    with pytest.raises(AttributeError):
        secret._value = b"x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del secret._value
    with pytest.raises(TypeError):
        bytes(secret)  # type: ignore[call-overload]
    assert copy.copy(secret) is secret and copy.deepcopy(secret) is secret
