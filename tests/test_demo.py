"""The ESP demo: passes when tshark verifies every frame, fails loudly when any frame does not."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from ciphermesh import demo
from ciphermesh.cli.main import main as cli_main
from ciphermesh.keys import KeyLine
from ciphermesh.pcap import build_pcap, parse_pcap
from ciphermesh.tshark import tshark_path

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(tshark_path() is None, reason="tshark is not installed"),
]

REPO = Path(__file__).resolve().parent.parent
KEY_LINE = "3+ rfc4106(gcm(aes)) 0123456789abcdef0123456789abcdef01234567 128"
BOOT_A = "3f8e2b1c-5d4a-4e6f-8a7b-9c0d1e2f3a4b"
BOOT_B = "b4a3f2e1-d0c9-4b8a-9f6e-5d4c3b2a1f0e"


def _run_demo(out: Path, *extra: str) -> int:
    key_file = out.parent / "keys"
    key_file.write_text(KEY_LINE + "\n")
    return demo.main(
        ["--out", str(out), "--key-file", str(key_file), "--boot-id-a", BOOT_A, "--boot-id-b", BOOT_B, *extra]
    )


def _cli_records(capsys: pytest.CaptureFixture[str]) -> list[str]:
    records = []
    for src, dst, src_boot, dst_boot in (
        ("10.0.1.1", "10.0.2.1", BOOT_A, BOOT_B),
        ("10.0.2.1", "10.0.1.1", BOOT_B, BOOT_A),
    ):
        assert (
            cli_main(
                [
                    "encryption",
                    "key",
                    "derive",
                    KEY_LINE,
                    "--src",
                    src,
                    "--dst",
                    dst,
                    "--src-boot-id",
                    src_boot,
                    "--dst-boot-id",
                    dst_boot,
                    "-o",
                    "wireshark",
                ]
            )
            == 0
        )
        records.append(capsys.readouterr().out.strip())
    return records


def test_demo_passes_and_shows_every_verified_frame(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _run_demo(out, "--pings", "4") == 0
    printed = capsys.readouterr()
    assert "OK: tshark verified the ICV of all 8 frames" in printed.out
    frame_lines = [
        line
        for line in printed.out.splitlines()
        if " -> " in line and "ICMP echo" in line and line.split()[0].isdigit()
    ]
    assert len(frame_lines) == 8
    assert all(line.split()[6] == "1" for line in frame_lines)  # the icv_good column
    assert "0123456789abcdef" not in printed.out + printed.err
    assert "<redacted>" in printed.out
    assert len(parse_pcap((out / demo.PCAP_NAME).read_bytes()).records) == 8
    assert stat.S_IMODE(os.stat(out / demo.SA_FILE_NAME).st_mode) == 0o600


def test_demo_records_equal_the_cli_derivation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = _cli_records(capsys)
    sa_file = tmp_path / "esp_sa.cli"
    sa_file.write_text("\n".join(records) + "\n")
    assert _run_demo(tmp_path / "out", "--esp-sa-file", str(sa_file)) == 0
    assert (tmp_path / "out" / demo.SA_FILE_NAME).read_text().splitlines() == records
    assert "match these keys" in capsys.readouterr().out


def test_demo_fails_when_given_records_differ(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = _cli_records(capsys)
    sa_file = tmp_path / "esp_sa.cli"
    sa_file.write_text("\n".join(reversed(records)) + "\n")
    assert _run_demo(tmp_path / "out", "--esp-sa-file", str(sa_file)) == 1
    assert "differ from the keys derived here" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("frame_index", "offset_from_end", "why"),
    [(2, 1, "last ICV byte"), (3, 20, "ciphertext byte"), (0, 0, "ESP sequence number")],
)
def test_verification_fails_on_a_corrupted_capture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], frame_index: int, offset_from_end: int, why: str
) -> None:
    out = tmp_path / "out"
    assert _run_demo(out) == 0
    capsys.readouterr()
    capture = parse_pcap((out / demo.PCAP_NAME).read_bytes())
    packets = [(r.timestamp_ns, bytearray(r.data)) for r in capture.records]
    victim = packets[frame_index][1]
    # offset 0 stands for the sequence number field: outer IPv4 header (20) + SPI (4) + 3.
    position = 27 if offset_from_end == 0 else len(victim) - offset_from_end
    victim[position] ^= 0x01
    corrupted = tmp_path / "corrupted.pcap"
    corrupted.write_bytes(build_pcap([(ts, bytes(data)) for ts, data in packets]))
    entries = (out / demo.SA_FILE_NAME).read_text().splitlines()

    assert demo.verify_capture(out / demo.PCAP_NAME, entries, 6).ok
    verification = demo.verify_capture(corrupted, entries, 6)
    assert not verification.ok, why
    assert verification.failures[0].startswith(f"frame {frame_index + 1}: ICV not verified"), why
    assert len(verification.failures) == 1


def test_demo_exits_non_zero_when_tshark_rejects_a_frame(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    build = demo.build_capture

    def build_with_a_flipped_icv_bit(
        keys: tuple[KeyLine, KeyLine], a: demo.Node, b: demo.Node, pings: int, start_ns: int
    ) -> bytes:
        capture = bytearray(build(keys, a, b, pings, start_ns))
        capture[-1] ^= 0x80  # last byte of the last frame: its ICV
        return bytes(capture)

    monkeypatch.setattr(demo, "build_capture", build_with_a_flipped_icv_bit)
    assert _run_demo(tmp_path / "out") == 1
    printed = capsys.readouterr()
    assert "OK:" not in printed.out
    assert printed.err.startswith("FAILED: tshark did not verify every frame: frame 6: ICV not verified")


def test_verification_fails_when_frames_are_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _run_demo(out) == 0
    capsys.readouterr()
    entries = (out / demo.SA_FILE_NAME).read_text().splitlines()
    verification = demo.verify_capture(out / demo.PCAP_NAME, entries, 7)
    assert verification.failures == ("tshark read 6 frames, expected 7",)


def test_demo_rejects_a_bad_key_file_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("3+ rfc4106(gcm(aes)) 0123 128\n")
    assert demo.main(["--out", str(tmp_path / "out"), "--key-file", str(key_file)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("FAILED: invalid key:") and err.count("\n") == 1


def test_demo_rejects_a_short_boot_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--out", str(tmp_path), "--boot-id-a", "short"]) == 1
    assert "boot ID" in capsys.readouterr().err


def test_demo_script_runs_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "esp-demo.sh"), str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid: key ID 3" in result.stdout
    assert "match these keys" in result.stdout
    assert "OK: tshark verified the ICV of all 6 frames" in result.stdout
    key_hex = (tmp_path / "demo" / "keys").read_text().split()[2]
    assert key_hex not in result.stdout + result.stderr
