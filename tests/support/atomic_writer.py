"""Files written as the kubelet's atomic writer writes a Secret or ConfigMap volume, for followers' tests."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path


def kubelet_write(directory: Path, files: dict[str, bytes]) -> None:
    """Write `files` into `directory` as the kubelet does: a new `..<timestamp>.<random>` directory, a
    `..data_tmp` symlink to it renamed over `..data`, each visible name a symlink into `..data`, the
    previous timestamped directory removed."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    new = Path(tempfile.mkdtemp(prefix=time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()), dir=directory))
    for name, content in files.items():
        (new / name).write_bytes(content)
    new.chmod(0o755)
    os.symlink(new.name, directory / "..data_tmp")
    os.rename(directory / "..data_tmp", data)
    for name in files:
        if not (directory / name).is_symlink():
            os.symlink(f"..data/{name}", directory / name)
    if old is not None:
        shutil.rmtree(directory / old)
