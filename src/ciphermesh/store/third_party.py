"""Where the pinned third-party commands are: built by `scripts/third-party.sh`, linked into the venv."""

from __future__ import annotations

import sys
from pathlib import Path

from ciphermesh.store.errors import StoreError

SETUP_STEP = "bash scripts/setup.sh (its step scripts/third-party.sh builds it)"


class ThirdPartyMissingError(StoreError):
    """A pinned third-party command has not been built; the message names the setup step."""


def third_party_binary(name: str) -> Path:
    """The path of pinned command `name` (`kube-apiserver`, `kubectl`, `etcd`, `helm`, `wireguard-go`)."""
    path = Path(sys.prefix) / "bin" / name
    if not path.exists():
        raise ThirdPartyMissingError(f"{name} is not built in {path.parent}: run {SETUP_STEP}")
    return path
