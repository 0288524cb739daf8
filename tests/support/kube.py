"""A real Kubernetes control plane for one test: the pinned etcd on a unix socket under a 0700 directory,
the pinned kube-apiserver on 127.0.0.1 with generated certificates and RBAC, the CiliumNode CRD applied
with the pinned kubectl (tests/support/proxy.py cuts clients off). Missing binaries fail the test with
the setup step to run, never skip it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from ciphermesh.store.etcd.client import EtcdClient
from ciphermesh.store.etcd.process import start_etcd, stop_etcd
from ciphermesh.store.kubernetes.apiserver import (
    ApiServer,
    spawn_apiserver,
    start_apiserver,
    stop_apiserver,
    wait_ready,
)
from ciphermesh.store.third_party import ThirdPartyMissingError, third_party_binary

CRD = Path(__file__).resolve().parents[2] / "install/kubernetes/ciphermesh/crds/ciliumnodes.yaml"
# The last line a starting kube-apiserver logs before it is ready: its post-start hooks have run, its
# CRDs are registered. Each instance of a rolling restart logs it once, into the same log file.
_STARTED = "all system priority classes are created successfully or already exist"
_WARM_UP = """{"apiVersion": "cilium.io/v2", "kind": "CiliumNode", "metadata": {"name": "warm-up"},
 "spec": {"addresses": [{"type": "InternalIP", "ip": "192.0.2.1"}], "bootid": "warm-up"}}"""


def require_binaries() -> dict[str, Path]:
    """The pinned binaries, or a failure naming the setup step (the tests must run, not skip)."""
    try:
        return {name: third_party_binary(name) for name in ("etcd", "kube-apiserver", "kubectl")}
    except ThirdPartyMissingError as exc:
        pytest.fail(str(exc), pytrace=False)


class KubeCluster:
    """etcd + kube-apiserver in `state_dir`; `restart` replaces the API server without a gap, as an
    HA control plane rolls one: the new instance shares the port before the old one stops."""

    def __init__(self, state_dir: Path) -> None:
        self.binaries = require_binaries()
        self.state_dir = state_dir
        self.etcd = start_etcd(state_dir, binary=str(self.binaries["etcd"]))
        self.server: ApiServer | None = None
        try:
            self.server = start_apiserver(state_dir, self.etcd.client_url, port_sharing=True)
            self.port = int(self.server.url.rsplit(":", 1)[1])
            self.kubectl("apply", "-f", str(CRD))
            self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/ciliumnodes.cilium.io")
            # The first write to a new resource sets up its storage, which can take seconds on a busy
            # machine: done here, so no test's timeout pays for it.
            self.kubectl("create", "-f", "-", stdin=_WARM_UP)
            self.kubectl("delete", "ciliumnode", "warm-up")
        except BaseException:
            self.close()
            raise

    @property
    def kubeconfig(self) -> Path:
        assert self.server is not None
        return self.server.kubeconfig

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [str(self.binaries["kubectl"]), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def restart(self) -> None:
        assert self.server is not None
        log = self.server.log_file
        before = log.read_text(errors="replace").count(_STARTED)
        new = spawn_apiserver(self.state_dir, self.etcd.client_url, port=self.port, port_sharing=True)
        try:
            deadline = time.monotonic() + 120
            while log.read_text(errors="replace").count(_STARTED) <= before:
                if new.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the new kube-apiserver did not start (see {log})")
                time.sleep(0.1)
        except BaseException:
            stop_apiserver(new)
            raise
        stop_apiserver(self.server)
        self.server = new
        wait_ready(new)

    def stop(self) -> None:
        if self.server is not None:
            stop_apiserver(self.server)

    def compact(self) -> None:
        """Compact etcd to its head, so that the history before now is gone from the store."""
        with EtcdClient(self.etcd.client_url) as raw:
            raw.compact(raw.put(b"/unrelated", b"x"))

    def close(self) -> None:
        self.stop()
        stop_etcd(self.state_dir)
