"""Issue 10 item 6: `encryption key set` against a real etcd, through the CLI's main, as it was found."""

from __future__ import annotations

import contextlib
import io
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciphermesh.cli.main import main
from ciphermesh.keys import KeyLineError, parse_secret
from ciphermesh.lab.cluster import LabInfo, connect, load_lab
from ciphermesh.lab.state import LAB_ROOT_ENV, LabPaths, write_private
from ciphermesh.store.errors import InvalidSecretError
from ciphermesh.store.etcd.process import start_etcd, stop_etcd

SECRET = "cilium-ipsec-keys"
GCM = "rfc4106(gcm(aes))"


def _line(key_id: str, key: str | None = None) -> str:
    return f"{key_id} {GCM} {key or secrets.token_hex(20)} 128"


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LabInfo]:
    """A lab of its store alone (a real etcd, no nodes), enough for the key commands."""
    monkeypatch.setenv(LAB_ROOT_ENV, str(tmp_path))
    paths = LabPaths.of("qckeys")
    paths.create()
    etcd = start_etcd(paths.root)
    try:
        write_private(paths.values, "encryption:\n  enabled: true\n  type: ipsec\n")
        paths.write_manifest({"name": paths.name, "nodes": [], "nodeIPs": {}, "subnet": "172.18.0.0/24",
                              "store": etcd.client_url})
        yield load_lab(paths.name)
    finally:
        stop_etcd(paths.root)


def _set(monkeypatch: pytest.MonkeyPatch, text: str) -> tuple[int, str, str]:
    """`ciphermesh encryption key set --lab qckeys -`, the line on standard input."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["encryption", "key", "set", "--lab", "qckeys", "-"])
    return code, out.getvalue(), err.getvalue()


def _stored(info: LabInfo) -> tuple[str, str]:
    with connect(info) as store:
        stored = store.get_key_secret(name=SECRET)
    assert stored is not None
    return stored.revision, stored.value.keys


def test_one_key_id_with_two_keys_is_refused_everywhere(
    lab: LabInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = secrets.token_hex(20), secrets.token_hex(20)
    twice = f"{_line('7+', first)}\n{_line('7+', second)}\n"
    code, out, err = _set(monkeypatch, twice)
    assert (code, out) == (1, "")
    assert err == ("ciphermesh: key not set: line 2, key ID: 7 is on line 1 too, with a different key; "
                   "one key ID (SPI) names one key\n")
    assert first not in err and second not in err
    # The store and the agents' parser refuse it the same way, whichever path the text takes.
    with connect(lab) as store, pytest.raises(InvalidSecretError, match="line 2, key ID: 7 is on line 1"):
        store.put_key_secret(twice, name=SECRET)
    with pytest.raises(KeyLineError):
        parse_secret(twice)
    # The same key twice under one ID is one key: accepted.
    assert _set(monkeypatch, f"{_line('7', first)}\n{_line('7+', first)}\n")[0] == 0


def test_the_same_key_again_says_nothing_changed(lab: LabInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    key = secrets.token_hex(20)
    assert _set(monkeypatch, _line("7+", key)) == (0, "IPsec key set, key ID (SPI): 7\n", "")
    before = _stored(lab)
    code, out, err = _set(monkeypatch, _line("7", key))
    assert (code, err) == (0, "")
    assert out == "IPsec key unchanged: the secret already holds this key as key ID (SPI) 7\n"
    assert _stored(lab) == before


def test_a_jump_backwards_explains_the_wrap_and_names_the_next_ids(
    lab: LabInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _set(monkeypatch, _line("3+"))[0] == 0
    before = _stored(lab)
    code, out, err = _set(monkeypatch, _line("15+"))
    assert (code, out) == (1, "")
    assert err == ("ciphermesh: key not set: key ID 15 goes backwards from 3: IDs count up to 15 and wrap "
                   "to 1, so one more than 7 ahead is behind; the next is 4 (any of 4, 5, 6, 7, 8, 9, 10)\n")
    assert _stored(lab) == before
    assert _set(monkeypatch, _line("10+"))[0] == 0


def test_key_set_help_points_at_standard_input(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["encryption", "key", "set", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "- reads the key line from stdin" in help_text and "`ps`" in help_text
