"""A ConfigMap or Secret volume as the kubelet's atomic writer lays it out: `..<timestamp>/` with the
files, `..data -> ..<timestamp>`, and each key a symlink `key -> ..data/key`; `update` swaps `..data`."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path


def write_volume(root: Path, data: Mapping[str, str]) -> None:
    """Write (or replace) the volume at `root` with `data`, swapping `..data` as the kubelet does."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = root / time.strftime(f"..%Y_%m_%d_%H_%M_%S.{time.monotonic_ns()}")
    stamp.mkdir()
    for key, value in data.items():
        (stamp / key).write_text(value)
    link = root / "..data"
    old = link.resolve() if link.is_symlink() else None
    tmp = root / "..data_tmp"
    os.symlink(stamp.name, tmp)
    os.rename(tmp, link)
    for key in data:
        visible = root / key
        if not visible.is_symlink():
            os.symlink(f"..data/{key}", visible)
    for entry in root.iterdir():
        # Keys that are gone: their visible links dangle now.
        if entry.is_symlink() and not entry.name.startswith("..") and not entry.exists():
            entry.unlink()
    if old is not None:
        shutil.rmtree(old)
