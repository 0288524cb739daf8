"""The lab's store as another local user finds it: no TCP port of etcd, no socket, file or /proc entry of
it that uid 65534 can read or write through (it once read and replaced the IPsec key over 127.0.0.1)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciphermesh.lab.cluster import LabInfo, connect
from ciphermesh.store.etcd.process import read_record
from tests.support.lab import IPSEC, lab_with_pods
from tests.support.names import unique_lab

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.timeout(180),
]

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
SECRET_KEY = "/ciphermesh/{lab}/secrets/kube-system/cilium-ipsec-keys"
_LOCAL_PORT = re.compile(r":(\d+)$")


@pytest.fixture(scope="module")
def lab() -> Iterator[LabInfo]:
    with lab_with_pods(unique_lab("lf"), *IPSEC) as (info, _pods):
        yield info


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, *argv], capture_output=True, text=True, timeout=20, check=False, cwd="/")


def _sockets(pid: int, kind: str) -> list[list[str]]:
    """`ss -H -<kind>anp` rows of the process's own sockets (every state), split in fields."""
    out = subprocess.run(["ss", "-H", f"-{kind}anp"], capture_output=True, text=True, check=True).stdout
    return [line.split() for line in out.splitlines() if f"pid={pid}," in line]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _attempts(lab: LabInfo, pid: int) -> list[list[str]]:
    """Every way in that uid 65534 might try: etcd's TCP ports, its socket, its files, its /proc entries."""
    secret = json.dumps({"key": _b64(SECRET_KEY.format(lab=lab.name))})
    everything = json.dumps({"key": _b64("\0"), "range_end": _b64("\0")})
    put = json.dumps({"key": _b64(f"/ciphermesh/{lab.name}/attacker"), "value": _b64("x")})
    ports = {int(match.group(1)) for row in _sockets(pid, "t") if (match := _LOCAL_PORT.search(row[3]))}
    sockets = [str(lab.paths.etcd_dir / "client.sock:0"), f"/proc/{pid}/cwd/client.sock:0",
               f"/proc/{pid}/root{lab.paths.etcd_dir}/client.sock:0"]
    tries = [["curl", "-sS", "--max-time", "3", "-X", "POST", "-d", body, f"http://127.0.0.1:{port}{path}"]
             for port in sorted(ports) for path, body in
             (("/v3/kv/range", secret), ("/v3/kv/range", everything), ("/v3/kv/put", put))]
    tries += [["curl", "-sS", "--max-time", "3", "--unix-socket", sock, "-X", "POST", "-d", body,
               f"http://etcd{path}"] for sock in sockets for path, body in
              (("/v3/kv/range", secret), ("/v3/kv/put", put))]
    files = [lab.paths.manifest, lab.paths.values, lab.paths.etcd_dir / "etcd.json",
             lab.paths.etcd_dir / "data" / "member" / "snap" / "db", lab.paths.pids / "operator.pid",
             Path(f"/proc/{pid}/environ"), Path(f"/proc/{pid}/cwd/data/member/snap/db")]
    tries += [["cat", str(path)] for path in files]
    tries += [["ls", str(path)] for path in (lab.paths.root, lab.paths.etcd_dir, f"/proc/{pid}/fd")]
    tries += [["touch", str(lab.paths.root / "x")], ["touch", str(lab.paths.etcd_dir / "data" / "x")]]
    return tries


def test_no_other_user_reaches_the_lab_store(lab: LabInfo) -> None:
    record = read_record(lab.paths.root)
    assert record is not None
    pid = record.pid
    listening = [row for row in _sockets(pid, "t") if row[0] == "LISTEN"]
    assert not listening, f"etcd listens on TCP: {listening}"
    assert not _sockets(pid, "u"), "etcd has UDP sockets"
    # Its unix listeners are files in the 0700 lab directory, none an abstract name (those have no
    # permissions: anyone in the namespace could connect).
    unix_listeners = [row[4] for row in _sockets(pid, "x") if row[1] == "LISTEN"]
    assert sorted(unix_listeners) == ["client.sock:0", "peer.sock:0"], unix_listeners
    for directory in (lab.paths.root, lab.paths.etcd_dir):
        assert directory.stat().st_mode & 0o077 == 0, directory
    for name in ("client.sock:0", "peer.sock:0"):
        assert (lab.paths.etcd_dir / name).stat().st_mode & 0o077 == 0, name

    with connect(lab) as store:
        before = store.get_key_secret()
    assert before is not None
    attempts = _attempts(lab, pid)
    # The same request as root does read the key: the attempts below fail for want of access, not of form.
    control = next(argv for argv in attempts if "--unix-socket" in argv and "/v3/kv/range" in argv[-1])
    assert '"kvs"' in subprocess.run(control, capture_output=True, text=True, timeout=20, check=True).stdout
    got_in = []
    for argv in attempts:
        result = _as_nobody(*argv)
        if result.returncode == 0:
            got_in.append(f"{' '.join(argv)} -> {result.stdout[:100]!r}")
    assert not got_in, "\n".join(got_in)
    with connect(lab) as store:
        after = store.get_key_secret()
    assert after is not None and (after.value.keys, after.revision) == (before.value.keys, before.revision)
