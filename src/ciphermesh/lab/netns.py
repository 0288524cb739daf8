"""Named network namespaces as `ip netns` keeps them (bind mounts under /run/netns), and running in them."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import config as pyroute2_config
from pyroute2 import netns as pyroute2_netns

from ciphermesh.lab.names import is_lab_netns
from ciphermesh.lab.processes import kill_netns_processes, pids_in_netns

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
# pyroute2 forks a helper per namespace socket and stops it with SIGTERM, which can land before the helper
# reaches os._exit: with the caller's Python handler still installed, a handler that raises (sys.exit)
# unwinds the caller's stack in the helper and runs its `finally` blocks there (CI saw a forked copy of a
# benchmark run `lab down` on the lab it was building). The helper resets SIGTERM to the default first.
pyroute2_config.disable_mp_signal = True


class NetnsError(RuntimeError):
    """A namespace could not be created, entered or removed."""


def netns_path(name: str) -> Path:
    if not name or "/" in name or name in (".", ".."):
        raise NetnsError(f"bad namespace name {name!r}")
    return NETNS_DIR / name


def _mount_points() -> set[str]:
    points = set()
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            points.add(line.split()[4])
    return points


def exists(name: str) -> bool:
    """Whether the namespace is there and usable (its file is a mount point, not a crash leftover)."""
    return str(netns_path(name)) in _mount_points()


def create(name: str) -> None:
    """Create the namespace unless it exists; a file left without its mount by a crash is replaced."""
    path = netns_path(name)
    if exists(name):
        return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    try:
        pyroute2_netns.create(name)
    except OSError as exc:
        if not exists(name):
            raise NetnsError(f"cannot create network namespace {name}: {exc.strerror or exc}") from exc
    if not exists(name):
        raise NetnsError(f"network namespace {name} was not created")


def delete(name: str) -> None:
    """Stop the processes inside, then unmount and remove the namespace; nothing to do if it is gone."""
    path = netns_path(name)
    kill_netns_processes(name)
    if exists(name) and _libc.umount2(str(path).encode(), _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code != errno.EINVAL:
            raise NetnsError(f"cannot unmount {path}: {os.strerror(code)}")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def names() -> list[str]:
    """Every named namespace: files under /run/netns and mounts there whose file is gone."""
    found = set()
    with contextlib.suppress(FileNotFoundError):
        found.update(os.listdir(NETNS_DIR))
    prefix = f"{NETNS_DIR}/"
    found.update(point[len(prefix) :] for point in _mount_points() if point.startswith(prefix))
    return sorted(found)


@dataclass(frozen=True)
class LabResidue:
    """What of a lab is on this machine: its namespaces (their links and mounts) and processes inside."""

    namespaces: tuple[str, ...]
    pids: tuple[int, ...]

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.pids)


def lab_residue(lab: str) -> LabResidue:
    """Everything of lab `lab`, by its namespace names; after `lab down` (or before `lab up`) it is empty."""
    namespaces = tuple(name for name in names() if is_lab_netns(lab, name))
    pids = sorted({pid for name in namespaces for pid in pids_in_netns(name)})
    return LabResidue(namespaces, tuple(pids))


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        raise NetnsError(f"cannot enter {what}: {os.strerror(ctypes.get_errno())}")


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the block with this thread in the namespace: files under /proc/sys/net and new sockets are its."""
    if not exists(name):
        raise NetnsError(f"network namespace {name} does not exist")
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, name)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own, "the original network namespace")
    finally:
        os.close(own)


def iproute(name: str) -> Any:
    """An IPRoute bound to the namespace; it never creates one (pyroute2 would by default)."""
    if not exists(name):
        raise NetnsError(f"network namespace {name} does not exist")
    return IPRoute(netns=name, flags=0)


def write_sysctls(name: str, values: Mapping[str, str]) -> None:
    """Set `net.*` sysctls (dotted names, as `sysctl -w`) inside the namespace."""
    with entered(name):
        for key, value in values.items():
            if not key.startswith("net.") or "/" in key:
                raise NetnsError(f"sysctl {key!r}: only net.* keys are per namespace")
            try:
                Path("/proc/sys", *key.split(".")).write_text(value)
            except OSError as exc:
                raise NetnsError(f"sysctl {key}={value} in {name}: {exc.strerror or exc}") from exc


def command(name: str, argv: Sequence[str]) -> list[str]:
    """`argv` wrapped to run in the namespace (nsenter execs it: the process's pid is the command's)."""
    if not argv:
        raise NetnsError("no command given")
    return ["nsenter", f"--net={netns_path(name)}", "--", *argv]


def run(
    name: str,
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 30.0,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command in the namespace and collect its output as text."""
    if not exists(name):
        raise NetnsError(f"network namespace {name} does not exist")
    result = subprocess.run(
        command(name, argv), input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise NetnsError(
            f"{' '.join(argv)} in {name} exited {result.returncode}" + (f": {detail[-1]}" if detail else "")
        )
    return result


def popen(name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Start a command in the namespace; `kwargs` go to subprocess.Popen."""
    if not exists(name):
        raise NetnsError(f"network namespace {name} does not exist")
    return subprocess.Popen(command(name, argv), **kwargs)
