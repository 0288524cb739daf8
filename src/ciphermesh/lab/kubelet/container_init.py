"""The first program of a lab container, already inside the node's network namespace and a private
mount namespace of its own (`unshare --mount --propagation private`): it mounts a sysfs of that network
namespace, bind-mounts each volume at its mountPath, then execs the container's command (under setpriv).

Run as `python -m ciphermesh.lab.kubelet.container_init SPEC.json`; the spec is written by the kubelet.
Nothing here reaches the machine's own mount table: the namespace and its mounts go with the last
process of the container.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys
from pathlib import Path

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _mount(source: str, target: str, fstype: str | None, flags: int) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags, None) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"mount {source} on {target}: {os.strerror(error)}")


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and not path.is_symlink():
        path = path.parent
    return path


def _mirror(directory: Path) -> None:
    """Cover `directory` with a tmpfs that shows the same entries (bind mounts, symlinks recreated),
    so that missing mount points can be made in it without creating anything on the machine."""
    # The directory as it was, reached through a descriptor once the tmpfs hides it.
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    mode = directory.stat().st_mode & 0o7777
    _mount("tmpfs", str(directory), "tmpfs", 0)
    os.chmod(directory, mode)
    for entry in os.scandir(f"/proc/self/fd/{fd}"):
        copy = directory / entry.name
        if entry.is_symlink():
            copy.symlink_to(os.readlink(entry.path))
            continue
        if entry.is_dir():
            copy.mkdir()
        else:
            copy.touch()
        _mount(entry.path, str(copy), None, MS_BIND | MS_REC)
    os.close(fd)


def make_mount_point(target: Path, is_dir: bool, mirrored: set[Path]) -> None:
    """Make `target` exist inside this mount namespace only."""
    if target.exists():
        return
    ancestor = _existing_ancestor(target.parent).resolve()
    if ancestor == Path("/"):
        raise OSError(f"mountPath {target}: no parent directory exists to create it in")
    if ancestor not in mirrored:
        _mirror(ancestor)
        mirrored.add(ancestor)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        target.mkdir(exist_ok=True)
    else:
        target.touch()


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    # /sys as this network namespace shows it (as `ip netns exec` and container runtimes do).
    if _libc.umount2(b"/sys", MNT_DETACH) == 0:
        _mount("sysfs", "/sys", "sysfs", 0)
    mirrored: set[Path] = set()
    for mount in spec["mounts"]:
        source, target = mount["source"], Path(mount["target"])
        make_mount_point(target, os.path.isdir(source), mirrored)
        _mount(source, str(target), None, MS_BIND | MS_REC)
        if mount["readOnly"]:
            _mount(source, str(target), None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    if spec.get("workingDir"):
        os.chdir(spec["workingDir"])
    argv = spec["argv"]
    os.execvpe(argv[0], argv, spec["env"])


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except OSError as exc:
        print(f"lab kubelet: cannot start the container: {exc}", file=sys.stderr, flush=True)
        sys.exit(126)
