"""The pinned third-party commands: found in one place, missing ones named with the setup step, and the
build cache of scripts/third-party.sh reused on a second run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ciphermesh.store.third_party import ThirdPartyMissingError, third_party_binary
from tests.support.kube import require_binaries

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_command_names_the_setup_step() -> None:
    with pytest.raises(
        ThirdPartyMissingError, match=r"^no-such-tool is not built in .*: run bash scripts/setup"
    ):
        third_party_binary("no-such-tool")


def test_the_kubernetes_harness_fails_rather_than_skips_without_the_build(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"etcd is not built in .*: run bash scripts/setup\.sh"):
        require_binaries()


@pytest.mark.slow
def test_a_second_run_reuses_the_cache(tmp_path: Path) -> None:
    env = os.environ | {
        "CIPHERMESH_THIRD_PARTY_CACHE": str(tmp_path / "cache"),
        "CIPHERMESH_THIRD_PARTY_LINKS": str(tmp_path / "bin"),
    }
    command = ["bash", str(ROOT / "scripts/third-party.sh"), "wireguard"]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    link = tmp_path / "bin/wireguard-go"
    target = link.resolve()
    assert target.is_relative_to(tmp_path / "cache") and (target.parents[1] / "complete").exists()
    started = time.monotonic()
    again = subprocess.run(command, env=env, check=True, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 5 and "building" not in again.stderr
    assert link.resolve() == target
    assert subprocess.run(
        [str(link), "--version"], capture_output=True, text=True, check=True
    ).stdout.startswith("wireguard-go v0.0.2025")
