"""Run a real etcd (Debian's etcd-server 3.4) for a lab, with its data and record in the lab's state dir.

Layout under `<state_dir>/etcd/` (0700): `data/` (etcd's data dir), `client.sock:0` and `peer.sock:0` (its
only listeners: unix sockets, so only who may enter this directory reaches the store; there is no TCP
listener for anyone on the machine to use), `etcd.json` (pid and URLs, written as soon as the process
exists so a crashed run can still be stopped; it stays after a stop, and a pid counts as ours only while
alive with our data dir on its command line) and `etcd.log`. A restart listens on the same socket path,
so clients reconnect. etcd 3.4 has no `--unsafe-no-fsync` (3.5 added it): writes are fsynced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from ciphermesh.store.etcd.client import EtcdClient

ETCD_BINARY = "etcd"
DEFAULT_START_TIMEOUT = 20.0
DEFAULT_STOP_TIMEOUT = 10.0
_RECORD = "etcd.json"
_LOG_TAIL_BYTES = 4096
# etcd 3.4 takes a unix listener only as `unix://host:port` and binds the file `host:port` in its working
# directory: the names below, in the etcd directory.
_CLIENT_SOCKET = "client.sock:0"
_PEER_SOCKET = "peer.sock:0"
# sun_path holds 108 bytes with the terminating NUL; clients connect by the absolute path.
_MAX_SOCKET_PATH = 107

# Popen handles of etcds this process started, so stopping one also reaps it.
_children: dict[int, subprocess.Popen[bytes]] = {}


class EtcdProcessError(Exception):
    """etcd could not be started or stopped; the message is one line."""


class EtcdAlreadyRunningError(EtcdProcessError):
    """An etcd recorded for this state directory is still running."""


@dataclass(frozen=True)
class EtcdInfo:
    pid: int
    client_url: str
    peer_url: str
    data_dir: str
    log_file: str


def etcd_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "etcd"


def client_endpoint(state_dir: Path) -> str:
    """The URL clients use for the state dir's etcd, running or not: `unix://` and the socket's path."""
    return f"unix://{(etcd_dir(state_dir) / _CLIENT_SOCKET).absolute()}"


def read_record(state_dir: Path) -> EtcdInfo | None:
    """What the last start recorded, whether or not that etcd still runs."""
    try:
        raw = json.loads((etcd_dir(state_dir) / _RECORD).read_text())
        # Fields a record of an older version has and this one does not are no reason to lose the pid.
        known = {field.name for field in dataclasses.fields(EtcdInfo)}
        return EtcdInfo(**{k: v for k, v in raw.items() if k in known})
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def running_etcd(state_dir: Path) -> EtcdInfo | None:
    """The recorded etcd if it is still alive (and still the etcd of this state dir)."""
    info = read_record(state_dir)
    if info is None or not _is_our_etcd(info):
        return None
    return info


def client_url(state_dir: Path) -> str:
    """The client URL of the lab's running etcd."""
    info = running_etcd(state_dir)
    if info is None:
        raise EtcdProcessError(f"no etcd is running for {state_dir}")
    return info.client_url


def start_etcd(
    state_dir: Path,
    *,
    name: str = "ciphermesh",
    binary: str = ETCD_BINARY,
    timeout: float = DEFAULT_START_TIMEOUT,
    replace_running: bool = False,
    env: Mapping[str, str] | None = None,
) -> EtcdInfo:
    """Start etcd with its data in `state_dir` and wait until it is healthy; `env`: variables to add."""
    running = running_etcd(state_dir)
    if running is not None:
        if not replace_running:
            raise EtcdAlreadyRunningError(f"etcd for {state_dir} is already running (pid {running.pid})")
        stop_etcd(state_dir)
    directory = etcd_dir(state_dir).absolute()
    socket_path = directory / _CLIENT_SOCKET
    if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
        raise EtcdProcessError(f"etcd's socket path {socket_path} is longer than the {_MAX_SOCKET_PATH} "
                               "bytes a unix socket allows: use a shorter state directory")
    data_dir = directory / "data"
    for private in (directory, data_dir):
        private.mkdir(mode=0o700, parents=True, exist_ok=True)
        private.chmod(0o700)
    info, proc = _spawn(binary=binary, name=name, data_dir=data_dir, directory=directory, extra_env=env or {})
    failure = _wait_healthy(info, proc, timeout)
    if failure is not None:
        _stop_pid(info.pid, DEFAULT_STOP_TIMEOUT)
        raise EtcdProcessError(failure)
    return info


def stop_etcd(state_dir: Path, *, timeout: float = DEFAULT_STOP_TIMEOUT) -> bool:
    """Stop the state dir's etcd (SIGTERM, then SIGKILL); True if one was running. Data and record stay."""
    info = running_etcd(state_dir)
    if info is None:
        return False
    _stop_pid(info.pid, timeout)
    return True


def _spawn(
    *, binary: str, name: str, data_dir: Path, directory: Path, extra_env: Mapping[str, str]
) -> tuple[EtcdInfo, subprocess.Popen[bytes]]:
    client = f"unix://{_CLIENT_SOCKET}"
    peer = f"unix://{_PEER_SOCKET}"
    log_file = directory / "etcd.log"
    # A socket file left by an etcd that was killed would make the new one fail to listen.
    for stale in (_CLIENT_SOCKET, _PEER_SOCKET):
        with contextlib.suppress(FileNotFoundError):
            (directory / stale).unlink()
    args = [
        binary,
        f"--name={name}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={name}={peer}",
        "--initial-cluster-state=new",
        f"--initial-cluster-token=ciphermesh-{os.getpid()}-{time.monotonic_ns()}",
        "--logger=zap",
        "--log-outputs=stderr",
        "--log-level=warn",
        # Bounded history keeps the lab's database small; watchers re-list if they fall behind it.
        "--auto-compaction-mode=revision",
        "--auto-compaction-retention=10000",
    ]
    # ETCD_* variables from the caller's environment would silently override these flags.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")} | dict(extra_env)
    with open(log_file, "ab") as log:
        try:
            # umask 077: the sockets and every file etcd writes are its owner's only.
            proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True,
                cwd=directory, umask=0o077,
            )
        except OSError as exc:
            raise EtcdProcessError(f"cannot run {binary}: {exc.strerror or exc}") from None
    _children[proc.pid] = proc
    info = EtcdInfo(proc.pid, client_endpoint(directory.parent), f"unix://{directory / _PEER_SOCKET}",
                    str(data_dir), str(log_file))
    record = directory / _RECORD
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(info), indent=1) + "\n")
    tmp.replace(record)
    return info, proc


def _wait_healthy(info: EtcdInfo, proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """None once etcd is healthy, else why it is not."""
    deadline = time.monotonic() + timeout
    with EtcdClient(info.client_url, timeout=1.0) as client:
        while time.monotonic() < deadline:
            status = proc.poll()
            if status is not None:
                return f"etcd exited with status {status} while starting: {_last_log_error(info.log_file)}"
            if client.health():
                return None
            time.sleep(0.05)
    return f"etcd did not become healthy within {timeout:g} s (see {info.log_file})"


def _last_log_error(log_file: str) -> str:
    try:
        with open(log_file, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _LOG_TAIL_BYTES))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return "no log"
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            if line.strip():
                return line.strip()
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal", "panic"):
            detail = entry.get("error")
            return f"{entry.get('msg', '')}: {detail}" if detail else str(entry.get("msg", ""))
    return "no error in its log"


def _is_our_etcd(info: EtcdInfo) -> bool:
    """The pid is alive and its command line names our data dir (pids get reused)."""
    if not _alive(info.pid):
        return False
    try:
        cmdline = Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"--data-dir={info.data_dir}".encode() in cmdline


def _stop_pid(pid: int, timeout: float) -> None:
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        if _wait_gone(pid, wait):
            break
    else:
        raise EtcdProcessError(f"etcd (pid {pid}) did not stop after SIGKILL")
    _children.pop(pid, None)


def _wait_gone(pid: int, timeout: float) -> bool:
    proc = _children.get(pid)
    if proc is not None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        _reap(pid)
        return False
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
