"""Key line grammar: Cilium's valid lines parse, everything else is a one-line error without key bytes."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ciphermesh.keys import AeadKey, AuthEncKey, KeyLine, KeyLineError, SecretBytes, parse_line, parse_secret
from ciphermesh.keys.algorithms import AUTH_ALGORITHMS

GCM = "rfc4106(gcm(aes))"
K = "44434241343332312423222114131211f4f3f2f1"  # Cilium's keysAeadDat fixture (AES-128 + salt)
K256 = K + "44434241343332312423222114131211"
A = "0123456789abcdef0123456789abcdef"  # Cilium's keysDat fixture: 16-byte hmac(sha256) key
E = "fedcba9876543210fedcba9876543210"
A20 = "a1b2c3d4e5f60718293a4b5c6d7e8f9010203040"

MALFORMED = [
    ("", "line", "empty"),
    (f"3 {GCM} {K}", "ICV", "missing"),
    (f" 3+ {GCM} {K} 128", "line", "empty field"),
    (f"3+  {GCM} {K} 128", "line", "empty field"),
    (f"3+ {GCM} {K} 128 ", "line", "empty field"),
    (f"3+ {GCM} {K}  128", "line", "empty field"),
    (f"-1 {GCM} {K} 128", "key ID", "negative"),
    (f"-1+ {GCM} {K} 128", "key ID", "negative"),
    (f"0 {GCM} {K} 128", "key ID", "zero"),
    (f"16+ {GCM} {K} 128", "key ID", "'16' is out of range; it must be 1..15"),
    (f"255 {GCM} {K} 128", "key ID", "out of range"),
    (f"99999999999999999999999+ {GCM} {K} 128", "key ID", "out of range"),
    (f"3++ {GCM} {K} 128", "key ID", "not a number"),
    (f"+3 {GCM} {K} 128", "key ID", "not a number"),
    (f"x {GCM} {K} 128", "key ID", "not a number"),
    (f"{GCM} {K} 128", "line", "3 fields"),
    ("3+", "line", "1 field;"),
    (f"3+ {GCM} {K} 128 10.0.0.1 extra", "line", "6 fields"),
    (f"3+ {GCM} {K} 128 10.0.0.1", "line", "is an AEAD and needs 4 fields"),
    (f"3+ gcm(aes) {K} 128", "algorithm", "did you mean rfc4106(gcm(aes))"),
    (f"3+ rfc4543(gcm(aes)) {K} 128", "algorithm", "'rfc4543(gcm(aes))' is not a supported AEAD"),
    (f"3+ {K} {GCM} 128", "algorithm", "a value of 40 characters (not shown)"),
    (f"3+ {GCM} {K} 256", "ICV", "no GCM ICV is 256 bits"),
    (f"3+ {GCM} {K} 32", "ICV", "32 bits is not allowed"),
    (f"3+ {GCM} {K} abc", "ICV", "not a length in bits"),
    (f"3+ {GCM} {K} -128", "ICV", "not a length in bits"),
    (f"3+ {GCM} {K[:-1]} 128", "key", "odd number of hex digits (39)"),
    (f"3+ {GCM} {K[:-2]}zz 128", "key", "not hexadecimal (40 characters)"),
    (f"3+ {GCM} 0X{K} 128", "key", "not hexadecimal"),
    (f"3+ {GCM} 0x 128", "key", "empty"),
    (f'3+ {GCM} "" 128', "key", "empty"),
    (f"3+ {GCM} {K[:32]} 128", "key", "16 bytes, but rfc4106(gcm(aes)) needs 20, 28 or 36"),
    (f"3+ {GCM} 128 {K}", "key", "odd number of hex digits (3)"),
    ('3 digest_null "" cipher_null ""', "auth algorithm", "digest_null gives no authentication"),
    (f'3 hmac(sha256) {A} cipher_null ""', "enc algorithm", "cipher_null gives no encryption"),
    (f"3 hmac(md5) {A} cbc(aes) {E}", "auth algorithm", "'hmac(md5)' is not a supported authentication"),
    (f"3 hmac(sha256) {A} cbc(des) {E}", "enc algorithm", "'cbc(des)' is not a supported encryption"),
    (f"3 hmac(sha256) {A[:30]} cbc(aes) {E}", "auth key", "15 bytes, but hmac(sha256) needs 16 or 32"),
    (f"3 hmac(sha1) {A} cbc(aes) {E}", "auth key", "16 bytes, but hmac(sha1) needs 20"),
    (f"3 hmac(sha256) {A} cbc(aes) {E[:30]}", "enc key", "15 bytes, but cbc(aes) needs 16, 24 or 32"),
    (f"3 hmac(sha256) {A} cbc(aes) {E[:-1]}x", "enc key", "not hexadecimal"),
    (f"3+ hmac(sha256) {A} 128", "line", "hmac(sha256) needs 5 fields"),
    (f"3+\t{GCM} {K} 128", "line", "tab at column 3"),
    (f"3+ {GCM} {K} 128\r", "line", "control character U+000D"),
    (f"3+ {GCM} {K} 128\n4+ {GCM} {K} 128", "line", "control character U+000A"),
    (f"\uff13+ {GCM} {K} 128", "line", "non-ASCII character U+FF13 at column 1"),
]


def hex_runs(text: str) -> set[str]:
    """Every 8-character window of every hex-looking token: what must not leak into an error."""
    tokens = re.findall(r"[0-9a-fA-F]{8,}", text)
    return {token[i : i + 8] for token in tokens for i in range(len(token) - 7)}


def test_table_is_large_enough() -> None:
    assert len(MALFORMED) >= 25


@pytest.mark.parametrize(("line", "field", "reason"), MALFORMED)
def test_malformed_line_is_a_one_line_error_naming_the_field(line: str, field: str, reason: str) -> None:
    with pytest.raises(KeyLineError) as caught:
        parse_line(line)
    err = caught.value
    message = str(err)
    assert err.field == field
    assert reason in err.reason
    assert message == f"{field}: {err.reason}"
    assert "\n" not in message and "\r" not in message
    leaked = {run for run in hex_runs(line) if run.lower() in message.lower()}
    assert not leaked, f"error text leaks key hex: {message}"


def test_aead_line_parses_with_cilium_fixture() -> None:
    line = parse_line(f"4 {GCM} {K} 128")
    assert line == KeyLine(4, False, AeadKey(GCM, SecretBytes(bytes.fromhex(K)), 128))


@pytest.mark.parametrize("icv", [64, 96, 128])
@pytest.mark.parametrize("key", [K, K + "0011223344556677", K256])
def test_every_gcm_size_and_icv_is_accepted(key: str, icv: int) -> None:
    material = parse_line(f"3+ {GCM} {key} {icv}").material
    assert isinstance(material, AeadKey)
    assert (len(material.key), material.icv_bits) == (len(key) // 2, icv)


def test_auth_enc_line_parses_with_cilium_fixture() -> None:
    line = parse_line(f"1 hmac(sha256) {A} cbc(aes) {A}")
    assert line.key_id == 1 and not line.plus
    assert line.material == AuthEncKey(
        "hmac(sha256)", SecretBytes(bytes.fromhex(A)), "cbc(aes)", SecretBytes(bytes.fromhex(A))
    )


def test_hex_prefix_case_and_leading_zeros_are_accepted() -> None:
    plain = parse_line(f"3+ {GCM} {K} 128")
    assert parse_line(f"3+ {GCM} 0x{K.upper()} 0128") == plain
    assert parse_line(f"03+ {GCM} {K} 128") == plain


def test_plus_is_kept_for_formatting_only() -> None:
    with_plus, without = parse_line(f"3+ {GCM} {K} 128"), parse_line(f"3 {GCM} {K} 128")
    assert with_plus.plus and not without.plus
    assert with_plus.material == without.material


def test_format_redacts_unless_revealed() -> None:
    line = parse_line(f"3+ hmac(sha512) {A}{A} cbc(aes) 0x{E}")
    assert line.format() == "3+ hmac(sha512) <redacted> cbc(aes) <redacted>"
    assert line.format(reveal=True) == f"3+ hmac(sha512) {A}{A} cbc(aes) {E}"
    assert parse_line(f"7 {GCM} {K} 96").format() == f"7 {GCM} <redacted> 96"


def test_direct_construction_is_validated_too() -> None:
    aead = AeadKey(GCM, SecretBytes(bytes(20)), 128)
    with pytest.raises(KeyLineError, match=r"^key ID: 16 is out of range"):
        KeyLine(16, True, aead)
    with pytest.raises(KeyLineError, match=r"^ICV: no GCM ICV is 256 bits"):
        AeadKey(GCM, SecretBytes(bytes(20)), 256)
    with pytest.raises(KeyLineError, match=r"^enc key: 8 bytes"):
        AuthEncKey("hmac(sha256)", SecretBytes(bytes(32)), "cbc(aes)", SecretBytes(bytes(8)))


def test_secret_last_line_wins_and_blank_lines_are_skipped() -> None:
    text = f"3+ {GCM} {K} 128\r\n\n   \n4+ hmac(sha256) {A} cbc(aes) {E}\n"
    assert parse_secret(text) == parse_line(f"4+ hmac(sha256) {A} cbc(aes) {E}")
    assert parse_secret(f"5 {GCM} {K} 64") == parse_line(f"5 {GCM} {K} 64")


def test_secret_rejects_any_invalid_line_naming_its_number() -> None:
    with pytest.raises(KeyLineError) as caught:
        parse_secret(f"3+ {GCM} {K} 128\n\n16+ {GCM} {K} 128\n5+ {GCM} {K} 128")
    assert caught.value.field == "line 3, key ID"
    assert str(caught.value).startswith("line 3, key ID: '16' is out of range")


@pytest.mark.parametrize("text", ["", "\n", " \r\n\n"])
def test_secret_without_a_line_is_rejected(text: str) -> None:
    with pytest.raises(KeyLineError, match=r"^secret: no key line$"):
        parse_secret(text)


def _keys(lengths: tuple[int, ...]) -> st.SearchStrategy[SecretBytes]:
    return st.sampled_from(lengths).flatmap(lambda n: st.binary(min_size=n, max_size=n)).map(SecretBytes)


AUTH_ENC = st.sampled_from(list(AUTH_ALGORITHMS.values())).flatmap(
    lambda auth: st.builds(
        AuthEncKey, st.just(auth.name), _keys(auth.key_lengths), st.just("cbc(aes)"), _keys((16, 24, 32))
    )
)
MATERIAL = st.one_of(
    st.builds(AeadKey, st.just(GCM), _keys((20, 28, 36)), st.sampled_from((64, 96, 128))), AUTH_ENC
)
KEY_LINES = st.builds(KeyLine, st.integers(1, 15), st.booleans(), MATERIAL)


@given(KEY_LINES)
def test_format_parse_round_trip(line: KeyLine) -> None:
    assert parse_line(line.format(reveal=True)) == line
    assert parse_secret(line.format(reveal=True) + "\n") == line


@given(KEY_LINES)
def test_redacted_format_never_contains_the_key(line: KeyLine) -> None:
    m = line.material
    keys = [m.key] if isinstance(m, AeadKey) else [m.auth_key, m.enc_key]
    redacted = line.format()
    for text in (redacted, repr(line), str(line)):
        assert all(key.reveal().hex() not in text for key in keys)
    assert redacted.count("<redacted>") == len(keys)
    with pytest.raises(KeyLineError):
        parse_line(redacted)


LINE_ALPHABET = st.sampled_from([*'0123456789abcdefx+ ()-\t"', GCM, "hmac(sha256)"])


@given(st.one_of(st.text(max_size=120), st.lists(LINE_ALPHABET, max_size=40).map("".join)))
def test_any_text_parses_or_gives_a_one_line_key_line_error(text: str) -> None:
    try:
        parse_line(text)
    except KeyLineError as err:
        assert "\n" not in str(err)
        assert str(err) == f"{err.field}: {err.reason}"
