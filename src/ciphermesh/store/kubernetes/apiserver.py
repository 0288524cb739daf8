"""Run a real kube-apiserver (the pinned build) on 127.0.0.1 over an etcd reached by its unix socket.

Layout under `<state_dir>/apiserver/` (0700): `pki/` (from `pki.make_pki`: the admin's client cert is in
`system:masters`), `admin.kubeconfig`, `apiserver.log`. Authorization is RBAC; service-account tokens are
signed with the generated key. Only loopback is bound, and only who may read `pki/` can authenticate.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ciphermesh.store.errors import StoreError
from ciphermesh.store.kubernetes.pki import Pki, make_pki
from ciphermesh.store.third_party import third_party_binary

ADMIN = "ciphermesh-admin"
DEFAULT_START_TIMEOUT = 120.0
_STOP_TIMEOUT = 15.0
_LOG_TAIL = 600


class ApiServerError(StoreError):
    """kube-apiserver could not be started; the message is one line."""


@dataclass(frozen=True)
class ApiServer:
    """A running kube-apiserver and what a client needs to reach it as the admin."""

    proc: subprocess.Popen[bytes]
    url: str
    kubeconfig: Path
    pki: Pki
    log_file: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def apiserver_args(pki: Pki, etcd_url: str, port: int, *, port_sharing: bool = False) -> list[str]:
    """kube-apiserver's flags, as envtest starts it, bound to loopback; `port_sharing` lets a second
    instance take the same port (SO_REUSEPORT) so that it can replace the first without a gap."""
    return [
        str(third_party_binary("kube-apiserver")),
        f"--etcd-servers={etcd_url}",
        f"--secure-port={port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--cert-dir={pki.root}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        "--authorization-mode=RBAC",
        f"--service-account-issuer=https://127.0.0.1:{port}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        "--service-cluster-ip-range=10.96.0.0/24",
        "--allow-privileged=true",
        "--profiling=false",
        # No `kubernetes` Service endpoints: a loopback address is not a valid one.
        "--endpoint-reconciler-type=none",
        f"--permit-port-sharing={str(port_sharing).lower()}",
        "--v=1",
    ]


def start_apiserver(
    state_dir: Path,
    etcd_url: str,
    *,
    port: int | None = None,
    port_sharing: bool = False,
    timeout: float = DEFAULT_START_TIMEOUT,
) -> ApiServer:
    """Start kube-apiserver with fresh certificates (or those already in `state_dir`) and wait until
    it is ready; the caller stops it with `stop_apiserver`."""
    server = spawn_apiserver(state_dir, etcd_url, port=port, port_sharing=port_sharing)
    try:
        wait_ready(server, timeout)
    except BaseException:
        stop_apiserver(server)
        raise
    return server


def spawn_apiserver(
    state_dir: Path, etcd_url: str, *, port: int | None = None, port_sharing: bool = False
) -> ApiServer:
    """Start kube-apiserver and return at once; `wait_ready` waits for it."""
    directory = Path(state_dir).absolute() / "apiserver"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    pki = ensure_pki(directory / "pki")
    port = port or free_port()
    url = f"https://127.0.0.1:{port}"
    kubeconfig = directory / "admin.kubeconfig"
    write_kubeconfig(kubeconfig, url, pki, ADMIN)
    log_file = directory / "apiserver.log"
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            apiserver_args(pki, etcd_url, port, port_sharing=port_sharing),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            umask=0o077,
        )
    return ApiServer(proc, url, kubeconfig, pki, log_file)


def ensure_pki(root: Path) -> Pki:
    """The certificates under `root`, made (with the admin's client cert) if they are not there yet."""
    pki = Pki(root)
    if not pki.client_cert(ADMIN).exists():
        pki = make_pki(root, {ADMIN: ("system:masters",)})
    return pki


def stop_apiserver(server: ApiServer) -> None:
    """SIGTERM, then SIGKILL; reaped either way."""
    for sig, wait in ((signal.SIGTERM, _STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
        if server.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(wait)


def write_kubeconfig(path: Path, url: str, pki: Pki, user: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "ciphermesh", "cluster": {"server": url, "certificate-authority": str(pki.ca_cert)}}
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(pki.client_cert(user)),
                    "client-key": str(pki.client_key(user)),
                },
            }
        ],
        "contexts": [{"name": "ciphermesh", "context": {"cluster": "ciphermesh", "user": user}}],
        "current-context": "ciphermesh",
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f)


def admin_ssl_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.client_cert(ADMIN)), str(pki.client_key(ADMIN)))
    return context


def readyz(url: str, context: ssl.SSLContext) -> bool:
    """Whether the kube-apiserver at `url` answers /readyz with 200 (within 2 s)."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=2.0)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_ready(server: ApiServer, timeout: float = DEFAULT_START_TIMEOUT) -> None:
    """Return once /readyz answers 200; `ApiServerError` with its last log line if it exits first."""
    context = admin_ssl_context(server.pki)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = server.proc.poll()
        if status is not None:
            raise ApiServerError(
                f"kube-apiserver exited with status {status} while starting: {log_tail(server.log_file)}"
            )
        if readyz(server.url, context):
            return
        time.sleep(0.2)
    raise ApiServerError(f"kube-apiserver was not ready within {timeout:g} s (see {server.log_file})")


def log_tail(log_file: Path) -> str:
    """The last line of a kube-apiserver log (shortened), for a one-line error."""
    try:
        lines = log_file.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1][-_LOG_TAIL:] if lines else "no log"
