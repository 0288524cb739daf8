"""The token file cache and the in-cluster configuration, on real files (no API server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ciphermesh.store.errors import StoreError
from ciphermesh.store.kubernetes.incluster import SERVICEACCOUNT_DIR_ENV, in_cluster_config
from ciphermesh.store.kubernetes.token import TOKEN_REREAD_SECONDS, TokenFile
from ciphermesh.store.open import open_store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_reread_once_a_minute_old(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    clock = Clock()
    tokens = TokenFile(path, clock=clock)
    path.write_text("second")
    clock.now += TOKEN_REREAD_SECONDS - 1
    assert tokens.token() == "first"
    clock.now += 1
    assert tokens.token() == "second"


def test_refresh_reads_at_once_and_a_bad_file_keeps_the_last_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first")
    tokens = TokenFile(path, clock=Clock())
    assert tokens.refresh() is False
    path.write_text("second")
    assert tokens.refresh() is True and tokens.token() == "second"
    path.unlink()
    assert tokens.refresh() is False and tokens.token() == "second"


def test_in_cluster_needs_the_service_environment_and_the_mounted_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv(SERVICEACCOUNT_DIR_ENV, str(tmp_path))
    with pytest.raises(StoreError, match="KUBERNETES_SERVICE_HOST"):
        open_store("kubernetes", "c")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    with pytest.raises(StoreError, match=r"ca\.crt is missing"):
        in_cluster_config()
    (tmp_path / "ca.crt").write_text("")
    (tmp_path / "token").write_text("t")
    config = in_cluster_config()
    assert config.server == "https://[fd00::1]:6443"
    assert config.token_file == str(tmp_path / "token") and config.token is None


def test_a_kubeconfig_endpoint_must_be_an_absolute_readable_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="must be absolute"):
        open_store("kubernetes://relative/kubeconfig", "c")
    with pytest.raises(StoreError, match="No such file"):
        open_store(f"kubernetes://{tmp_path}/missing", "c")
