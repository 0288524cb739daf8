"""`ciphermesh encryption key generate|validate|derive` through the real entry point."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest

from ciphermesh.cli.main import main
from ciphermesh.keys import parse_line

G = "44434241343332312423222114131211f4f3f2f1"
VECTOR_LINE = f"3+ rfc4106(gcm(aes)) {G} 128"
BOOT_S = "5f616d5f-b237-aed6-4ac7-123456789abc"
BOOT_D = "5f616d5f-aed6-4ac7-b237-987654321abc"
DERIVE = ["--src", "10.0.0.1", "--dst", "10.0.0.2", "--src-boot-id", BOOT_S, "--dst-boot-id", BOOT_D]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["encryption", "key", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_generate_default(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "generate")
    assert status == 0 and err == ""
    assert re.fullmatch(r"3\+ rfc4106\(gcm\(aes\)\) [0-9a-f]{40} 128\n", out)
    assert parse_line(out.strip()).key_id == 3


def test_generate_algo_and_key_id(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "generate", "--algo", "cbc-aes-sha512", "--key-id", "15")
    assert status == 0
    assert re.fullmatch(r"15\+ hmac\(sha512\) [0-9a-f]{64} cbc\(aes\) [0-9a-f]{32}\n", out)


def test_generate_twice_differs(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "generate")[1] != run(capsys, "generate")[1]


def test_generate_bad_key_id(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "generate", "--key-id", "16")
    assert status != 0 and out == ""
    assert err == "ciphermesh: --key-id: 16 is out of range; it must be 1..15\n"


def test_generate_unknown_algo_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run(capsys, "generate", "--algo", "gcm-aes")
    assert exited.value.code == 2
    assert "invalid choice: 'gcm-aes'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("line", "summary"),
    [
        (VECTOR_LINE, "valid: key ID 3, rfc4106(gcm(aes)) AES-128, ICV 128 bits\n"),
        (f"7 rfc4106(gcm(aes)) {G}{G[:32]} 96", "valid: key ID 7, rfc4106(gcm(aes)) AES-256, ICV 96 bits\n"),
        (
            f"1 hmac(sha256) {G[:32]} cbc(aes) {G[:32]}",
            "valid: key ID 1, hmac(sha256) (16-byte key) with cbc(aes) AES-128, ICV 96 bits\n",
        ),
    ],
)
def test_validate_prints_a_redacted_summary(
    capsys: pytest.CaptureFixture[str], line: str, summary: str
) -> None:
    status, out, err = run(capsys, "validate", line)
    assert (status, out, err) == (0, summary, "")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (f"3+ rfc4106(gcm(aes)) {G} 256", "invalid key line: ICV: no GCM ICV is 256 bits; use 64, 96 or 128"),
        (f"3 rfc4106(gcm(aes)) {G}", "invalid key line: ICV: missing"),
        (f"3+ rfc4106(gcm(aes)) {G[:-1]}x 128", "invalid key line: key: not hexadecimal (40 characters)"),
    ],
)
def test_validate_rejects_with_one_line(capsys: pytest.CaptureFixture[str], line: str, message: str) -> None:
    status, out, err = run(capsys, "validate", line)
    assert status != 0 and out == ""
    assert err.startswith(f"ciphermesh: {message}") and err.count("\n") == 1
    assert G[:8] not in err


def test_validate_reads_the_secret_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{VECTOR_LINE}\n4+ rfc4106(gcm(aes)) {G} 64\n"))
    assert run(capsys, "validate", "-")[1] == "valid: key ID 4, rfc4106(gcm(aes)) AES-128, ICV 64 bits\n"


def test_derive_prints_the_revealed_tunnel_key(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "derive", VECTOR_LINE, *DERIVE)
    assert (status, err) == (0, "")
    assert out == "3+ rfc4106(gcm(aes)) b35ff49a24fef81f1e829f461112b556fb89c95d 128\n"


def test_derive_wireshark_entry(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "derive", VECTOR_LINE, *DERIVE, "-o", "wireshark")
    assert status == 0
    assert out == (
        '"IPv4","10.0.0.1","10.0.0.2","0x00000003","AES-GCM with 16 octet ICV [RFC4106]",'
        '"0xb35ff49a24fef81f1e829f461112b556fb89c95d","NULL",""\n'
    )


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (("10.0.0.1", "10.0.0.300"), "ciphermesh: --src: '10.0.0.300' is not an IP address\n"),
        ((BOOT_S, BOOT_S[:20]), "ciphermesh: src boot ID: 20 characters; a boot ID must be at least 36"),
    ],
)
def test_derive_bad_arguments(
    capsys: pytest.CaptureFixture[str], replace: tuple[str, str], message: str
) -> None:
    argv = [replace[1] if arg == replace[0] else arg for arg in DERIVE]
    status, out, err = run(capsys, "derive", VECTOR_LINE, *argv)
    assert status != 0 and out == ""
    assert err.startswith(message)


def test_derive_wireshark_refuses_mixed_families(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["fd00::2" if arg == "10.0.0.2" else arg for arg in DERIVE]
    status, _, err = run(capsys, "derive", VECTOR_LINE, *argv, "-o", "wireshark")
    assert status != 0
    assert "different address families" in err


def test_python_dash_m_runs_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ciphermesh", "encryption", "key", "validate", VECTOR_LINE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "valid: key ID 3, rfc4106(gcm(aes)) AES-128, ICV 128 bits\n",
        "",
    )
