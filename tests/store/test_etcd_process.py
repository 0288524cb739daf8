"""Starting and stopping a real etcd for a lab: records, restarts, stale processes, failures."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ciphermesh.store.etcd.client import EtcdClient
from ciphermesh.store.etcd.process import (
    EtcdAlreadyRunningError,
    EtcdProcessError,
    client_url,
    running_etcd,
    start_etcd,
    stop_etcd,
)
from tests.support.etcd import EtcdFixture
from tests.support.wait import wait_until


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_start_records_a_unix_endpoint_and_stop_ends_the_process(etcd: EtcdFixture) -> None:
    record = json.loads((etcd.state_dir / "etcd" / "etcd.json").read_text())
    assert record["client_url"] == etcd.url
    socket_path = etcd.state_dir.absolute() / "etcd" / "client.sock:0"
    assert etcd.url == f"unix://{socket_path}"
    assert record["peer_url"] == f"unix://{socket_path.with_name('peer.sock:0')}"
    assert client_url(etcd.state_dir) == etcd.url
    data_dir = Path(record["data_dir"])
    assert data_dir.parent == etcd.state_dir.absolute() / "etcd"
    for private in (data_dir, data_dir.parent):
        assert private.stat().st_mode & 0o777 == 0o700
    # etcd runs with umask 077: even its sockets are its owner's only.
    assert stat.S_ISSOCK(socket_path.stat().st_mode) and socket_path.stat().st_mode & 0o077 == 0
    with EtcdClient(etcd.url) as client:
        assert client.health()
    assert stop_etcd(etcd.state_dir) is True
    assert not _alive(record["pid"])
    assert running_etcd(etcd.state_dir) is None
    assert stop_etcd(etcd.state_dir) is False
    with pytest.raises(EtcdProcessError, match="no etcd is running"):
        client_url(etcd.state_dir)


def test_etcd_has_no_tcp_listener(etcd: EtcdFixture) -> None:
    inodes = {os.readlink(f"/proc/{etcd.info.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{etcd.info.pid}/fd")}
    listening = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{etcd.info.pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                listening.add(f"socket:[{fields[9]}]")
    assert not inodes & listening


def test_restart_keeps_data_and_endpoint(etcd: EtcdFixture) -> None:
    with EtcdClient(etcd.url) as client:
        client.put(b"/k", b"kept")
    before = etcd.url
    etcd.restart()
    assert etcd.url == before
    with EtcdClient(etcd.url) as client:
        kv = client.get(b"/k")
    assert kv is not None and kv.value == b"kept"


def test_a_killed_etcd_restarts_over_its_stale_sockets(etcd: EtcdFixture) -> None:
    with EtcdClient(etcd.url) as client:
        client.put(b"/k", b"kept")
    os.kill(etcd.info.pid, signal.SIGKILL)
    wait_until(lambda: running_etcd(etcd.state_dir) is None, 5.0, "etcd dead")
    assert (etcd.state_dir / "etcd" / "client.sock:0").exists()
    etcd.start()
    with EtcdClient(etcd.url) as client:
        kv = client.get(b"/k")
    assert kv is not None and kv.value == b"kept"


def test_a_state_dir_too_deep_for_a_socket_is_a_clear_error(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    with pytest.raises(EtcdProcessError, match=r"^etcd's socket path \S+ is longer than the 107 bytes"):
        start_etcd(deep)
    assert not deep.exists()


def test_second_start_is_refused_or_replaces(etcd: EtcdFixture) -> None:
    pid = etcd.info.pid
    with pytest.raises(EtcdAlreadyRunningError, match=f"already running \\(pid {pid}\\)"):
        start_etcd(etcd.state_dir)
    replaced = start_etcd(etcd.state_dir, replace_running=True)
    assert replaced.pid != pid and not _alive(pid)
    etcd.info = replaced


def test_a_stale_etcd_from_a_crashed_run_is_found_and_stopped(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # A process that starts etcd and dies without stopping it, as a crashed `lab up` would.
    code = "import sys; from pathlib import Path; from ciphermesh.store.etcd.process import start_etcd; "
    code += "print(start_etcd(Path(sys.argv[1])).pid)"
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, str(state)], capture_output=True, text=True, check=True, timeout=60
        )
        pid = int(out.stdout)
        found = running_etcd(state)
        assert found is not None and found.pid == pid and _alive(pid)
        assert stop_etcd(state) is True
        assert not _alive(pid)
    finally:
        stop_etcd(state)


def test_a_recorded_pid_that_is_not_our_etcd_is_left_alone(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "etcd").mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        record = {
            "pid": sleeper.pid,
            "client_url": f"unix://{state}/etcd/client.sock:0",
            "peer_url": f"unix://{state}/etcd/peer.sock:0",
            "data_dir": str(state / "etcd" / "data"),
            "log_file": str(state / "etcd" / "etcd.log"),
        }
        (state / "etcd" / "etcd.json").write_text(json.dumps(record))
        assert running_etcd(state) is None
        assert stop_etcd(state) is False
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_etcd_that_exits_at_once_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EtcdProcessError, match=r"^etcd exited with status 1 while starting"):
        start_etcd(tmp_path / "state", binary="false")


def test_a_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EtcdProcessError, match=r"^cannot run /nonexistent/etcd: No such file"):
        start_etcd(tmp_path / "state", binary="/nonexistent/etcd")


def test_etcd_variables_in_the_environment_do_not_leak_into_etcd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETCD_LISTEN_CLIENT_URLS", "http://127.0.0.1:1")
    state = tmp_path / "state"
    try:
        info = start_etcd(state)
        environ = Path(f"/proc/{info.pid}/environ").read_bytes().split(b"\0")
        assert not any(v.startswith(b"ETCD") for v in environ)
        assert os.environ["ETCD_LISTEN_CLIENT_URLS"]
    finally:
        stop_etcd(state)
