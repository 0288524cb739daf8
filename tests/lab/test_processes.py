"""Lab process supervision: pid files that survive pid reuse, stop that always ends the process."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from ciphermesh.lab.processes import (
    kill_netns_processes,
    pid_alive,
    pids_in_netns,
    read_pidfile,
    start_daemon,
    stop_daemon,
)
from ciphermesh.lab.state import LabNameError, LabPaths, check_lab_name, write_private


def test_start_find_and_stop(tmp_path: Path) -> None:
    pidfile, log = tmp_path / "p.pid", tmp_path / "p.log"
    pid = start_daemon(["sh", "-c", "echo started; exec sleep 60"], pidfile=pidfile, log=log)
    try:
        assert read_pidfile(pidfile) == pid
        assert os.getsid(pid) == pid
        deadline = time.monotonic() + 5
        while "started" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop_daemon(pidfile)
    assert not pid_alive(pid)
    assert not pidfile.exists()
    assert "started" in log.read_text()


def test_sigterm_ignored_then_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "p.pid"
    pid = start_daemon(["sh", "-c", "trap '' TERM; sleep 60 & wait"], pidfile=pidfile, log=tmp_path / "l")
    stop_daemon(pidfile, timeout=0.5)
    assert not pid_alive(pid)


def test_pidfile_of_another_process_is_not_trusted(tmp_path: Path) -> None:
    pidfile = tmp_path / "p.pid"
    # Our own pid with a start time that is not ours: a reused pid must not be signalled.
    pidfile.write_text(f"{os.getpid()} 1\n")
    assert read_pidfile(pidfile) is None
    stop_daemon(pidfile)
    assert pid_alive(os.getpid())


@pytest.mark.netns
def test_processes_inside_a_namespace_are_found_and_killed(tmp_path: Path) -> None:
    netns = f"cmpr{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        pid = start_daemon(["sleep", "60"], pidfile=tmp_path / "s.pid", log=tmp_path / "s.log", netns=netns)
        # `ip netns exec` enters the namespace just after the fork: give it a moment.
        deadline = time.monotonic() + 5
        while pid not in pids_in_netns(netns) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pid in pids_in_netns(netns)
        assert os.getpid() not in pids_in_netns(netns)
        kill_netns_processes(netns)
        assert not pid_alive(pid)
    finally:
        kill_netns_processes(netns)
        subprocess.run(["ip", "netns", "del", netns], check=False)


def test_lab_names_and_private_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("", "Lab", "1ab", "lab-1", "abcdefghi"):
        with pytest.raises(LabNameError):
            check_lab_name(bad)
    monkeypatch.setenv("CIPHERMESH_LAB_ROOT", str(tmp_path))
    paths = LabPaths.of("cm")
    paths.create()
    paths.write_manifest({"nodes": 3})
    assert paths.read_manifest() == {"nodes": 3}
    assert (paths.manifest.stat().st_mode & 0o777) == 0o600
    write_private(paths.root / "k", "secret")
    assert (paths.root / "k").stat().st_mode & 0o077 == 0
