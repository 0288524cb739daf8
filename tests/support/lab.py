"""Whole labs for fault tests: the real CLI, underlay captures, pings, and a teardown that proves the lab
is gone (no namespace, process, mount or state of it; the machine's own namespace as it was)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from ciphermesh.cli.main import main
from ciphermesh.lab import capture as lab_capture
from ciphermesh.lab import netns
from ciphermesh.lab.cluster import LabInfo, load_lab
from ciphermesh.lab.down import lab_down
from ciphermesh.lab.names import is_lab_netns
from ciphermesh.lab.pod_registry import PodRecord, get_pod
from ciphermesh.lab.processes import pid_alive, read_pidfile
from ciphermesh.lab.state import LabPaths
from ciphermesh.lab.wire import WireReport, analyse_capture
from ciphermesh.store.etcd.process import read_record
from tests.support.netns import HostSnapshot, host_snapshot
from tests.support.wait import wait_until

IPSEC = ("--set", "encryption.enabled=true", "--set", "encryption.type=ipsec")
# `lab up` on etcd (the kvstore mode), for tests that drive the lab's own agents and etcd.
UP_ETCD = ("lab", "up", "--control-plane", "etcd")
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")



def quiet(_message: str) -> None:
    """Progress that says nothing."""


def run_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """`python -m ciphermesh ARGS`, as a user runs it: exit status, stdout and stderr."""
    # Wide enough that tables and messages are not wrapped mid-phrase.
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "ciphermesh", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=env)


def cli_json(*args: str) -> Any:
    """`ciphermesh ARGS -o json` through `main()` in this process, its output parsed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, "-o", "json"])
    assert code == 0, err.getvalue()
    return json.loads(out.getvalue())


def error_line(result: subprocess.CompletedProcess[str], *, alone: bool = True) -> str:
    """The one error line a failed command printed (with `alone`, the only thing on stderr)."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("ciphermesh: ")]
    assert len(errors) == 1, result.stderr
    if alone:
        assert lines == errors, result.stderr
    return errors[0]



def replies(pod: PodRecord, address: str, count: int) -> int:
    """How many of `count` echo requests from the pod got a reply (each waits at most a second)."""
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", address]
    result = netns.run(pod.netns, argv, check=False)
    match = re.search(r"(\d+) received", result.stdout)
    assert match, result.stdout + result.stderr
    return int(match.group(1))


def ping(pod: PodRecord, address: str, count: int = 1) -> bool:
    """Whether every one of `count` echo requests got its reply."""
    return replies(pod, address, count) == count


def reach_all(pods: Sequence[PodRecord], timeout: float = 10.0) -> None:
    """Every pod reaches every other (a path that is just coming back gets `timeout` seconds)."""
    for src in pods:
        for dst in pods:
            if src != dst:
                wait_until(partial(ping, src, dst.ip), timeout, f"{src.name} -> {dst.name} ({dst.ip})")


def wait_for_line(process: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    """Read the process's stderr until `marker` shows up (tcpdump's `listening on`); all read so far."""
    assert process.stderr is not None
    fd = process.stderr.fileno()
    deadline = time.monotonic() + timeout
    seen = b""
    while marker not in seen:
        left = deadline - time.monotonic()
        chunk = os.read(fd, 4096) if left > 0 and select.select([fd], [], [], left)[0] else b""
        if not chunk:
            process.kill()
            process.communicate()
            raise AssertionError(f"{marker.decode()!r} never came: {seen.decode(errors='replace')!r}")
        seen += chunk
    return seen


class UnderlayCapture:
    """The lab's underlay capture for a block: listening before it sends, drained of its tail at stop."""

    def __init__(self, lab: str, path: Path, snaplen: int = 0) -> None:
        self.path = path
        self._capture = lab_capture.UnderlayCapture(lab, path, snaplen)
        self._capture.start()

    def stop(self) -> bytes:
        """Stop tcpdump; the pcap, once tcpdump has said it dropped nothing (else it proves no absence)."""
        stats = self._capture.stop()
        dropped = stats.dropped_by_kernel
        assert dropped == 0, f"tcpdump dropped {dropped}: the capture proves nothing"
        return self.path.read_bytes()

    def __enter__(self) -> UnderlayCapture:
        return self

    def __exit__(self, *_: object) -> None:
        if self._capture.running:
            with contextlib.suppress(lab_capture.CaptureError):
                self._capture.stop()


def analyse(capture: UnderlayCapture, pod_cidrs: Sequence[IPv4Network]) -> WireReport:
    return analyse_capture(capture.stop(), pod_cidrs)


class BackgroundPing:
    """A pod pinging an address five times a second until stopped; its replies, with their times.

    ping flushes each line, so the file shows the replies while it runs.
    """

    def __init__(self, pod: PodRecord, address: str, log: Path) -> None:
        self.log = log
        argv = ["ping", "-n", "-D", "-i", "0.2", "-W", "1", address]
        with open(log, "wb") as out:
            self.process = netns.popen(pod.netns, argv, stdout=out, stderr=subprocess.DEVNULL)

    def replies(self) -> list[float]:
        """The wall-clock times of the replies so far."""
        lines = self.log.read_text().splitlines()
        return [float(m.group(1)) for line in lines if (m := _REPLY.match(line))]

    def stop(self) -> list[float]:
        """Stop it; the times of all its replies."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.replies()


def lab_pids(lab: str) -> set[int]:
    """Every live process of the lab: pid files, etcd's record, its namespaces, its dir on a command line."""
    paths = LabPaths.of(lab)
    pids = set(netns.lab_residue(lab).pids)
    for directory in (paths.pids, paths.pod_dir()):
        for pidfile in directory.glob("*.pid") if directory.exists() else []:
            if (pid := read_pidfile(pidfile)) is not None:
                pids.add(pid)
    record = read_record(paths.root)
    if record is not None and pid_alive(record.pid):
        pids.add(record.pid)
    return pids | processes_naming(paths.root)


def processes_naming(path: Path) -> set[int]:
    """Processes whose command line mentions `path` (daemons name their store socket or data dir)."""
    needle = str(path).encode()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes() and pid_alive(int(entry)):
                    found.add(int(entry))
    return found


def assert_lab_gone(lab: str, pids: set[int], before: HostSnapshot) -> None:
    """Nothing of the lab is left, and the machine's own namespace is as it was before the lab."""
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), 5.0, f"processes {sorted(pids)} of {lab} end")
    assert not netns.lab_residue(lab)
    assert not processes_naming(LabPaths.of(lab).root)
    root = LabPaths.of(lab).root
    assert not root.exists()
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    assert not [m for m in mounts if m.startswith("/run/netns/") and is_lab_netns(lab, m.split("/")[-1])]
    assert not [m for m in mounts if m == str(root) or m.startswith(f"{root}/")]
    after = host_snapshot()
    # Other labs may come and go meanwhile; the host's own links, addresses, routes and rules may not.
    assert after.links == before.links
    assert after.addresses == before.addresses
    assert after.routes == before.routes
    assert after.rules == before.rules
    assert not {name for name in after.netns ^ before.netns if name.startswith(f"{lab}-")}


@contextlib.contextmanager
def lab_guard(lab: str) -> Iterator[None]:
    """`lab_down` the lab after the block whatever happened; then check it is gone without a trace."""
    before = host_snapshot()
    pids: set[int] = set()
    try:
        yield
    finally:
        pids = lab_pids(lab)
        lab_down(lab, quiet)
    assert_lab_gone(lab, pids, before)


def node_entries(lab: str) -> dict[str, Any]:
    """`status -o json`'s nodes, by name."""
    return {node["name"]: node for node in cli_json("status", "--lab", lab)["nodes"]}


def pod_cidrs(lab: str) -> list[IPv4Network]:
    return [IPv4Network(cidr) for node in node_entries(lab).values() for cidr in node["podCIDRs"]]


def ip_json(namespace: str, *args: str, tool: str = "ip") -> Any:
    """iproute2's own view (`ip -j ...`, `bridge -j ...`) inside a namespace."""
    out = netns.run(namespace, [tool, "-j", *args]).stdout
    return json.loads(out) if out.strip() else []


NODES = ("node-1", "node-2", "node-3")
READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Lab:
    """A running lab and its pods by node."""

    info: LabInfo
    pods: dict[str, PodRecord]

    @property
    def name(self) -> str:
        return str(self.info.name)

    def all_pods(self) -> list[PodRecord]:
        return list(self.pods.values())


@contextlib.contextmanager
def lab_with_pods(name: str, *sets: str) -> Iterator[tuple[LabInfo, dict[str, PodRecord]]]:
    """A 3-node lab with the given `--set` arguments and pods a, b, c on node-1..3; always torn down."""
    with lab_guard(name):
        up = run_cli(*UP_ETCD, "--name", name, "--nodes", "3", *sets)
        assert up.returncode == 0, up.stderr
        assert up.stdout.startswith(f"lab {name} is up: 3 nodes on "), up.stdout
        info = load_lab(name)
        pods = {}
        for pod, node in zip(("a", "b", "c"), NODES, strict=True):
            created = run_cli("lab", "pod", "run", pod, "--name", name, "--node", node)
            assert created.returncode == 0, created.stderr
            pods[node] = get_pod(info, pod)
        yield info, pods
