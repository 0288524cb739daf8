"""The lab's long-running processes: start detached, find again by pid file, stop for sure."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ciphermesh.lab.state import write_private

# Set on every daemon a lab starts, to the lab's state directory: `lab down` finds them by it even when
# their pid files are gone (children inherit it, so whatever a daemon spawns is found too).
LAB_MARKER = "CIPHERMESH_LAB"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks: with the pid, it tells a process from a later reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def start_daemon(
    argv: Sequence[str],
    *,
    pidfile: Path,
    log: Path,
    netns: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    marker: str | None = None,
    umask: int = -1,
) -> int:
    """Start `argv` in its own session (inside `netns` if given), output to `log`; return its pid.

    With `marker`, the process carries `CIPHERMESH_LAB=<marker>` in its environment (see `marked_pids`);
    `umask` (e.g. 0o077) applies to the files it creates.
    """
    command = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    if marker is not None:
        env = {**(os.environ if env is None else env), LAB_MARKER: marker}
    log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            close_fds=True,
            umask=umask,
        )
    write_pidfile(pidfile, process.pid)
    return process.pid


def write_pidfile(pidfile: Path, pid: int) -> None:
    """Record `pid` with its start time, as `read_pidfile` checks it."""
    write_private(pidfile, f"{pid} {_start_time(pid) or '-'}\n")


def read_pidfile(pidfile: Path) -> int | None:
    """The pid in `pidfile` if that very process still runs."""
    try:
        pid_text, started = pidfile.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    current = _start_time(pid)
    if current is None or started not in ("-", current):
        return None
    return pid


def pid_alive(pid: int) -> bool:
    return _start_time(pid) is not None


def stop_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def stop_daemon(pidfile: Path, timeout: float = 5.0) -> None:
    """Stop the process of `pidfile` (if it still runs) and remove the file."""
    pid = read_pidfile(pidfile)
    if pid is not None:
        stop_pid(pid, timeout)
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()


def pids_in_netns(netns: str) -> list[int]:
    """Every process whose network namespace is the named one (as `ip netns pids` finds them)."""
    try:
        target = os.stat(f"/run/netns/{netns}")
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            info = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (info.st_dev, info.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry))
    return found


def kill_netns_processes(netns: str, timeout: float = 3.0) -> None:
    """Stop everything still running inside `netns`, so the namespace can really go away."""
    kill_pids(pids_in_netns(netns), timeout)


def marked_pids(marker: str) -> list[int]:
    """Every live process (but this one) whose environment has `CIPHERMESH_LAB=<marker>`."""
    wanted = f"{LAB_MARKER}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if wanted in environ.split(b"\0") and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def process_name(pid: int) -> str:
    """What `ps` shows as the command (its first words), for messages."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    words = [word for word in argv if word][:4]
    return " ".join(words) or "?"


def kill_pids(pids: Sequence[int], timeout: float = 3.0) -> None:
    """SIGTERM every one at once, then SIGKILL what is left after `timeout`."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
        time.sleep(0.02)
