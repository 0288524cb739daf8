"""The kubelet's AtomicWriter layout for configMap, secret and projected volumes.

`<dir>/..<timestamp>/` holds the files; `<dir>/..data` is a symlink to it, swapped by renaming a new
symlink `..data_tmp` over it (one rename: a reader sees the old set or the new one, never a mix); each
visible name is a symlink `key -> ..data/key`. Readers that follow `..data` (as Cilium's key watcher
does) therefore see a whole update at once.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DATA = "..data"
DATA_TMP = "..data_tmp"


@dataclass(frozen=True)
class File:
    """One file of a volume: its bytes and mode (the volume's defaultMode or the item's mode)."""

    data: bytes
    mode: int


def _current(directory: Path) -> dict[str, File] | None:
    """What `..data` holds now, or None if there is no complete payload yet."""
    target = directory / DATA
    if not target.is_symlink():
        return None
    found: dict[str, File] = {}
    root = target.resolve()
    for path in root.rglob("*"):
        if path.is_file():
            found[str(path.relative_to(root))] = File(path.read_bytes(), path.stat().st_mode & 0o7777)
    return found


def write_payload(directory: Path, payload: Mapping[str, File]) -> bool:
    """Make `directory` show exactly `payload`; False (and nothing touched) if it already does."""
    directory.mkdir(parents=True, exist_ok=True)
    if _current(directory) == dict(payload):
        return False
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y_%m_%d_%H_%M_%S.%f")
    new_dir = directory / f"..{stamp}"
    new_dir.mkdir(mode=0o755)
    for relative, file in payload.items():
        path = new_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(file.data)
        path.chmod(file.mode)
    old_target = os.readlink(directory / DATA) if (directory / DATA).is_symlink() else None
    tmp = directory / DATA_TMP
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(new_dir.name)
    os.rename(tmp, directory / DATA)
    _link_visible(directory, {relative.split("/", 1)[0] for relative in payload})
    if old_target is not None and old_target != new_dir.name:
        shutil.rmtree(directory / old_target, ignore_errors=True)
    return True


def _link_visible(directory: Path, names: set[str]) -> None:
    """`name -> ..data/name` for every top-level name of the payload; stale names removed."""
    for entry in directory.iterdir():
        if entry.name.startswith(".."):
            continue
        if entry.name not in names and entry.is_symlink():
            entry.unlink()
    for name in names:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"{DATA}/{name}")
