"""The node's WireGuard private key on disk: `<state dir>/cilium_wg0.key`, raw 32 bytes, 0600 (as Cilium)."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from ciphermesh.wireguard.keys import KEY_LEN, PrivateKey

KEY_FILENAME = "cilium_wg0.key"


class KeyFileError(RuntimeError):
    """The key file exists but cannot be used; the agent refuses to start rather than replace it."""


def load_or_create_private_key(state_dir: Path) -> PrivateKey:
    """The key kept in `state_dir`, or a new one written there (0600) if there is none yet."""
    path = state_dir / KEY_FILENAME
    try:
        return _load(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror or exc}") from None
    key = PrivateKey.generate(secrets.token_bytes)
    tmp = path.with_name(f".{KEY_FILENAME}.tmp")
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.reveal())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror or exc}") from None
    return key


def _load(path: Path) -> PrivateKey:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        raw = handle.read(KEY_LEN + 1)
    if mode & 0o077:
        raise KeyFileError(f"{path}: mode {mode:04o} lets others read the private key; chmod 600 it")
    if len(raw) != KEY_LEN:
        raise KeyFileError(f"{path}: {len(raw)} bytes, a WireGuard private key file holds exactly {KEY_LEN}")
    return PrivateKey(raw)
