"""Issue 10 item 7: what every command shares: a reader that goes away, `--` in help, `--lab` everywhere."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ciphermesh.cli.main import main


@pytest.mark.parametrize(
    "argv",
    [("values", "show", "-o", "json"), ("values", "list"), ("encryption", "key", "generate")],
)
def test_a_reader_that_went_away_ends_the_command_quietly(argv: tuple[str, ...]) -> None:
    """`values show -o json | head -1` ended in a BrokenPipeError traceback."""
    read, write = os.pipe()
    # The reader is gone before a byte is written, as `head -1` is once it has its line.
    os.close(read)
    try:
        result = subprocess.run([sys.executable, "-m", "ciphermesh", *argv], stdout=write,
                                stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (141, "")


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (("lab", "exec"), "usage: ciphermesh lab exec [-h] [--lab LAB] NODE -- CMD..."),
        (("lab", "pod", "exec"), "usage: ciphermesh lab pod exec [-h] [--lab LAB] pod -- CMD..."),
        (("lab", "pod", "run"), "usage: ciphermesh lab pod run [-h] [--lab LAB] --node NODE [--ip IP] pod "
                                "[-- CMD...]"),
    ],
)
def test_help_shows_the_command_after_the_double_dash(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], usage: str
) -> None:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == usage
    assert "CMD and its arguments come after --" in " ".join(out.split())


@pytest.mark.parametrize(
    "argv",
    [("lab", "up"), ("lab", "down"), ("lab", "exec", "node-1"), ("lab", "pod", "list"),
     ("lab", "pod", "delete", "p"), ("status",), ("encryption", "status"), ("encryption", "key", "show"),
     ("connectivity", "test")],
)
def test_every_lab_command_takes_lab(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    """`lab exec`/`lab pod` took only `--name`; now the option parses and the name reaches the lab layer."""
    assert main([*argv, "--lab", "Bad_Name"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("ciphermesh: ") and "lab name 'Bad_Name': use 1 to 8 lowercase" in line


def test_lab_up_defaults_to_the_kubernetes_control_plane(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["lab", "up", "--help"])
    assert "(default kubernetes)" in " ".join(capsys.readouterr().out.split())
