"""The ESP benchmark's plumbing: packets, arithmetic, report and CLI (its speed is measured, not tested)."""

from __future__ import annotations

import json
import struct

import pytest
from scapy.layers.inet import IP

from ciphermesh.bench.esp import EspBenchResult, EspBenchRow, ipv4_packet, run_esp_bench
from ciphermesh.bench.esp_report import as_json, goal_verdict, markdown_table
from ciphermesh.cli.main import main as cli_main


@pytest.mark.parametrize("size", [20, 64, 1400, 8000])
def test_ipv4_packet_is_valid_and_exactly_sized(size: int) -> None:
    packet = ipv4_packet(size)
    assert len(packet) == size == IP(packet).len
    total = sum(struct.unpack("!10H", packet[:20]))
    assert (total & 0xFFFF) + (total >> 16) == 0xFFFF  # the header checksum verifies


def test_ipv4_packet_rejects_impossible_sizes() -> None:
    for size in (19, 65536):
        with pytest.raises(ValueError, match=r"20\.\.65535"):
            ipv4_packet(size)


def test_row_arithmetic() -> None:
    row = EspBenchRow(
        "rfc4106-gcm-aes",
        1000,
        encap_us=1.0,
        decap_us=3.0,
        reference="AESGCM",
        bare_encrypt_us=0.5,
        bare_decrypt_us=1.5,
    )
    assert row.ratio == 2.0
    assert row.gbit_per_s == pytest.approx(2.0)  # 8000 bits in 4 µs
    assert row.cpu_seconds_per_gb == pytest.approx(4.0)  # 4 µs per 1000 bytes
    verdict = goal_verdict(EspBenchResult((row,), seconds=1.0, repeats=3))
    assert verdict == "goal not judged: rfc4106-gcm-aes at 1400 bytes was not measured"


def test_goal_verdict_judges_the_1400_byte_gcm_row() -> None:
    def row(encap: float) -> EspBenchRow:
        return EspBenchRow("rfc4106-gcm-aes", 1400, encap, 1.0, "AESGCM", 0.5, 0.5)

    assert goal_verdict(EspBenchResult((row(1.0),), 1.0, 1)).endswith(": met, 2.00x")
    assert goal_verdict(EspBenchResult((row(1.5),), 1.0, 1)).endswith(": NOT met, 2.50x")


def test_a_short_real_run_measures_every_operation() -> None:
    result = run_esp_bench((64,), ("rfc4106-gcm-aes", "cbc-aes-sha512"), seconds=0.02, repeats=1)
    assert [(r.algo, r.size) for r in result.rows] == [("rfc4106-gcm-aes", 64), ("cbc-aes-sha512", 64)]
    for row in result.rows:
        assert min(row.encap_us, row.decap_us, row.bare_encrypt_us, row.bare_decrypt_us) > 0
    assert [r.reference for r in result.rows] == ["AESGCM (AES-128)", "AES-128-CBC + HMAC-SHA512"]
    table = markdown_table(result)
    assert table.splitlines()[0].startswith("| algorithm | bytes | encap µs")
    assert len([line for line in table.splitlines() if line.startswith("| rfc4106")]) == 1
    assert json.loads(json.dumps(as_json(result)))["rows"][1]["algo"] == "cbc-aes-sha512"


def test_cli_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli_main(
            [
                "bench",
                "esp",
                "--sizes",
                "1400",
                "--seconds",
                "0.02",
                "--repeats",
                "1",
                "--algo",
                "rfc4106-gcm-aes",
                "-o",
                "json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert [row["size"] for row in report["rows"]] == [1400]
    assert report["goal"].startswith("goal (rfc4106-gcm-aes, 1400 B")
    assert set(report["machine"]) == {"cpu", "nproc", "python", "cryptography", "openssl"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sizes", "64,abc"], "--sizes: 'abc' is not a packet size"),
        (["--sizes", "10"], "--sizes: '10' is not a packet size"),
        (["--algo", "chacha"], "--algo: unknown algorithm 'chacha'"),
        (["--seconds", "0"], "--seconds must be positive"),
    ],
)
def test_cli_rejects_bad_options_in_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["bench", "esp", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ciphermesh: {message}") and err.count("\n") == 1
