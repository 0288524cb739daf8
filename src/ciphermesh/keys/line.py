"""One line of Cilium's IPsec key secret (`<id>[+] <algo> <hex> <icv>` or the auth+enc form)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeAlias

from ciphermesh.keys.algorithms import (
    AEAD_ALGORITHMS,
    AUTH_ALGORITHMS,
    ENC_ALGORITHMS,
    NULL_ALGORITHMS,
    AeadAlgorithm,
    AuthAlgorithm,
    EncAlgorithm,
)
from ciphermesh.keys.secret_bytes import SecretBytes

MIN_KEY_ID = 1
MAX_KEY_ID = 15
REDACTED = "<redacted>"

_ID_RANGE = f"{MIN_KEY_ID}..{MAX_KEY_ID}"
_AEAD_FORM = "ID ALGO KEY ICV-BITS"
_AUTH_ENC_FORM = "ID AUTH-ALGO KEY ENC-ALGO KEY"
_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(r"[0-9a-fA-F]*")
# A value is echoed in an error only if it cannot be key material: a few characters, or a
# lower-case algorithm-style name without a long hex run.
_NAME = re.compile(r"[a-z][a-z0-9_]*(\([a-z0-9_(),-]*\))?")
_HEX_RUN = re.compile(r"[0-9a-fA-F]{8}")


class KeyLineError(ValueError):
    """A rejected key line: `field` names the part, `reason` says why; never contains key material."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class AeadKey:
    """The AEAD form: one key (cipher key followed by its salt) and the ICV length in bits."""

    algo: str
    key: SecretBytes
    icv_bits: int

    def __post_init__(self) -> None:
        spec = _aead_spec(self.algo)
        if len(self.key) not in spec.material_lengths:
            raise KeyLineError(
                "key",
                f"{len(self.key)} bytes, but {self.algo} needs {_either(spec.material_lengths)} bytes "
                f"(the cipher key followed by a {spec.salt_len}-byte salt)",
            )
        if self.icv_bits not in spec.icv_bits:
            allowed = _either(spec.icv_bits)
            if self.icv_bits > max(spec.icv_bits):
                raise KeyLineError("ICV", f"no {spec.family} ICV is {self.icv_bits} bits; use {allowed}")
            raise KeyLineError("ICV", f"{self.icv_bits} bits is not allowed for {self.algo}; use {allowed}")


@dataclass(frozen=True)
class AuthEncKey:
    """The auth+enc form: an HMAC with its key and a CBC cipher with its key."""

    auth_algo: str
    auth_key: SecretBytes
    enc_algo: str
    enc_key: SecretBytes

    def __post_init__(self) -> None:
        auth = _auth_spec(self.auth_algo)
        if len(self.auth_key) not in auth.key_lengths:
            needs = _either(auth.key_lengths)
            raise KeyLineError("auth key", f"{len(self.auth_key)} bytes, but {self.auth_algo} needs {needs}")
        enc = _enc_spec(self.enc_algo)
        if len(self.enc_key) not in enc.key_lengths:
            needs = _either(enc.key_lengths)
            raise KeyLineError("enc key", f"{len(self.enc_key)} bytes, but {self.enc_algo} needs {needs}")


KeyMaterial: TypeAlias = AeadKey | AuthEncKey


@dataclass(frozen=True)
class KeyLine:
    """A parsed key line. `plus` is kept for formatting only: per-tunnel keys are always used."""

    key_id: int
    plus: bool
    material: KeyMaterial

    def __post_init__(self) -> None:
        if not MIN_KEY_ID <= self.key_id <= MAX_KEY_ID:
            raise KeyLineError("key ID", f"{self.key_id} is out of range; it must be {_ID_RANGE}")

    def format(self, reveal: bool = False) -> str:
        """The line as it appears in the secret; key hex is `<redacted>` unless `reveal`."""
        head = f"{self.key_id}{'+' if self.plus else ''}"
        m = self.material
        if isinstance(m, AeadKey):
            return f"{head} {m.algo} {_hex(m.key, reveal)} {m.icv_bits}"
        return f"{head} {m.auth_algo} {_hex(m.auth_key, reveal)} {m.enc_algo} {_hex(m.enc_key, reveal)}"


def parse_line(line: str) -> KeyLine:
    """Parse one key line, split on single spaces as Cilium does; raise KeyLineError if invalid."""
    if not line:
        raise KeyLineError("line", "empty")
    _check_characters(line)
    fields = line.split(" ")
    if "" in fields:
        raise KeyLineError(
            "line", "empty field: fields are separated by exactly one space, none leading or trailing"
        )
    if len(fields) == 3 and (fields[1] in AEAD_ALGORITHMS or fields[1].startswith("rfc")):
        raise KeyLineError("ICV", f"missing; an AEAD line has 4 fields: {_AEAD_FORM}")
    if len(fields) not in (4, 5):
        count = f"{len(fields)} field{'' if len(fields) == 1 else 's'}"
        raise KeyLineError("line", f"{count}; expected 4 ({_AEAD_FORM}) or 5 ({_AUTH_ENC_FORM})")
    key_id, plus = _parse_key_id(fields[0])
    if len(fields) == 4:
        return KeyLine(key_id, plus, _parse_aead(fields[1], fields[2], fields[3]))
    return KeyLine(key_id, plus, _parse_auth_enc(fields[1], fields[2], fields[3], fields[4]))


def parse_secret(text: str) -> KeyLine:
    """Parse the secret's text: every non-blank line must be valid and the last one wins.

    One key ID may not name two different keys: SPI = key ID, so peers could not tell them apart.
    """
    last: KeyLine | None = None
    seen: dict[int, tuple[int, KeyMaterial]] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        try:
            last = parse_line(line)
        except KeyLineError as exc:
            raise KeyLineError(f"line {number}, {exc.field}", exc.reason) from None
        first, material = seen.setdefault(last.key_id, (number, last.material))
        if material != last.material:
            raise KeyLineError(f"line {number}, key ID", f"{last.key_id} is on line {first} too, with a "
                               "different key; one key ID (SPI) names one key")
    if last is None:
        raise KeyLineError("secret", "no key line")
    return last


def _check_characters(line: str) -> None:
    for column, char in enumerate(line, start=1):
        if char == "\t":
            raise KeyLineError("line", f"tab at column {column}; fields are separated by single spaces")
        if not " " <= char <= "~":
            kind = "control" if char < " " or char == "\x7f" else "non-ASCII"
            raise KeyLineError("line", f"{kind} character U+{ord(char):04X} at column {column}")


def _parse_key_id(text: str) -> tuple[int, bool]:
    plus = text.endswith("+")
    digits = text.removesuffix("+")
    value = _decimal(digits)
    if value is None:
        if digits.startswith("-") and _decimal(digits[1:]) is not None:
            raise KeyLineError("key ID", f"{_describe(text)} is negative; it must be {_ID_RANGE}")
        raise KeyLineError(
            "key ID",
            f"{_describe(text)} is not a number {_ID_RANGE} with an optional trailing '+'",
        )
    if value == 0:
        raise KeyLineError("key ID", f"zero is not a valid key ID; it must be {_ID_RANGE}")
    if value > MAX_KEY_ID:
        raise KeyLineError("key ID", f"{_describe(digits)} is out of range; it must be {_ID_RANGE}")
    return value, plus


def _parse_aead(algo: str, key_text: str, icv_text: str) -> AeadKey:
    if algo in AUTH_ALGORITHMS:
        raise KeyLineError("line", f"{algo} needs 5 fields ({_AUTH_ENC_FORM}), got 4")
    _aead_spec(algo)
    key = _decode_hex("key", key_text)
    icv_bits = _decimal(icv_text)
    if icv_bits is None:
        raise KeyLineError("ICV", f"{_describe(icv_text)} is not a length in bits")
    return AeadKey(algo, key, icv_bits)


def _parse_auth_enc(auth_algo: str, auth_key: str, enc_algo: str, enc_key: str) -> AuthEncKey:
    if auth_algo in AEAD_ALGORITHMS:
        raise KeyLineError("line", f"{auth_algo} is an AEAD and needs 4 fields ({_AEAD_FORM}), got 5")
    _auth_spec(auth_algo)
    auth = _decode_hex("auth key", auth_key)
    _enc_spec(enc_algo)
    enc = _decode_hex("enc key", enc_key)
    return AuthEncKey(auth_algo, auth, enc_algo, enc)


def _aead_spec(algo: str) -> AeadAlgorithm:
    spec = AEAD_ALGORITHMS.get(algo)
    if spec is None:
        hint = f" (did you mean {next(iter(AEAD_ALGORITHMS))}?)" if algo == "gcm(aes)" else ""
        raise KeyLineError("algorithm", _unsupported(algo, "AEAD", AEAD_ALGORITHMS) + hint)
    return spec


def _auth_spec(algo: str) -> AuthAlgorithm:
    spec = AUTH_ALGORITHMS.get(algo)
    if spec is None:
        raise KeyLineError("auth algorithm", _unsupported(algo, "authentication", AUTH_ALGORITHMS))
    return spec


def _enc_spec(algo: str) -> EncAlgorithm:
    spec = ENC_ALGORITHMS.get(algo)
    if spec is None:
        raise KeyLineError("enc algorithm", _unsupported(algo, "encryption", ENC_ALGORITHMS))
    return spec


def _unsupported(algo: str, kind: str, supported: Iterable[str]) -> str:
    names = ", ".join(supported)
    if algo in NULL_ALGORITHMS:
        gives = "authentication" if kind == "authentication" else "encryption"
        return f"{algo} gives no {gives}; use {names}"
    return f"{_describe(algo)} is not a supported {kind} algorithm; use {names}"


def _decode_hex(field: str, text: str) -> SecretBytes:
    body = text.removeprefix("0x")
    if text == '""' or not body:
        raise KeyLineError(field, "empty")
    if not _HEX.fullmatch(body):
        raise KeyLineError(field, f"not hexadecimal ({len(body)} characters); write the key as hex digits")
    if len(body) % 2:
        raise KeyLineError(field, f"odd number of hex digits ({len(body)})")
    return SecretBytes(bytes.fromhex(body))


def _decimal(text: str) -> int | None:
    """ASCII digits only (like Go's strconv.Atoi without a sign); None for anything else."""
    if not _DIGITS.fullmatch(text):
        return None
    # Past 10 digits the exact value is irrelevant: any such number is out of every range.
    return int(text.lstrip("0")[:10] or "0")


def _describe(value: str) -> str:
    if len(value) <= 4 or (len(value) <= 40 and _NAME.fullmatch(value) and not _HEX_RUN.search(value)):
        return f"'{value}'"
    return f"a value of {len(value)} characters (not shown)"


def _either(options: tuple[int, ...]) -> str:
    words = [str(option) for option in options]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _hex(key: SecretBytes, reveal: bool) -> str:
    return key.reveal().hex() if reveal else REDACTED
