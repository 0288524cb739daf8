"""Reference paths between two plain namespaces joined by a veth pair: bare veth, and wireguard-go over it."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ciphermesh.bench.lab_measure import BenchError
from ciphermesh.bench.lab_scenario import Endpoints, Progress
from ciphermesh.lab import netns

UNDERLAY = ("192.168.250.1", "192.168.250.2")
TUNNEL = ("10.250.0.1", "10.250.0.2")
WG_PORT = 51820
WG_MTU = 1420
UAPI_DIR = Path("/var/run/wireguard")
_SIDES = ("c", "s")


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise BenchError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")


@contextmanager
def veth_pair(prefix: str) -> Iterator[tuple[str, str]]:
    """Two fresh namespaces `<prefix>-c`/`<prefix>-s` with veth `<prefix>c`/`<prefix>s` between them."""
    namespaces = tuple(f"{prefix}-{side}" for side in _SIDES)
    for name in namespaces:
        if netns.exists(name):
            raise BenchError(f"namespace {name} already exists; pick another prefix")
    try:
        for name in namespaces:
            netns.create(name)
        _ip("link", "add", f"{prefix}c", "netns", namespaces[0], "type", "veth",
            "peer", "name", f"{prefix}s", "netns", namespaces[1])
        for name, side, address in zip(namespaces, _SIDES, UNDERLAY, strict=True):
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", f"{prefix}{side}")
            _ip("-n", name, "link", "set", f"{prefix}{side}", "up")
            _ip("-n", name, "link", "set", "lo", "up")
        yield namespaces[0], namespaces[1]
    finally:
        for name in namespaces:
            netns.delete(name)


def _pair_prefix(letter: str) -> str:
    return f"b{letter}{secrets.token_hex(2)}"


@dataclass(frozen=True)
class VethScenario:
    """No tunnel at all: the kernel's veth between two namespaces, the ceiling of this machine."""

    name: str = "veth"
    label: str = "veth, no tunnel"
    tools: tuple[str, ...] = ("iperf3", "ping", "nsenter", "ip")

    @contextmanager
    def build(self, progress: Progress) -> Iterator[Endpoints]:
        prefix = _pair_prefix("v")
        progress(f"{self.name}: namespaces {prefix}-c, {prefix}-s")
        with veth_pair(prefix) as (client, server):
            yield Endpoints(client, server, UNDERLAY[1], None)


def _wg_keypair() -> tuple[str, str]:
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True)
    return private, public.stdout.strip()


def _wg_config(private: str, peer_public: str, peer_tunnel: str, peer_underlay: str) -> str:
    return (f"[Interface]\nPrivateKey = {private}\nListenPort = {WG_PORT}\n\n"
            f"[Peer]\nPublicKey = {peer_public}\nAllowedIPs = {peer_tunnel}/32\n"
            f"Endpoint = {peer_underlay}:{WG_PORT}\n")


def _wait_for_uapi(ifname: str, process: subprocess.Popen[bytes], log: Path) -> None:
    socket = UAPI_DIR / f"{ifname}.sock"
    deadline = time.monotonic() + 10
    while not socket.exists():
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:]
            raise BenchError(f"wireguard-go {ifname} exited {process.returncode}: {' '.join(tail)}")
        if time.monotonic() > deadline:
            raise BenchError(f"wireguard-go {ifname}: no UAPI socket {socket} after 10 s")
        time.sleep(0.05)


@dataclass(frozen=True)
class WireguardGoScenario:
    """The anchor: wireguard-go (the Debian build) in each of two namespaces, MTU 1420, over a veth pair."""

    name: str = "wireguard-go"
    label: str = "wireguard-go, 2 namespaces"
    tools: tuple[str, ...] = ("iperf3", "ping", "nsenter", "ip", "wireguard-go", "wg")

    @contextmanager
    def build(self, progress: Progress) -> Iterator[Endpoints]:
        prefix = _pair_prefix("w")
        progress(f"{self.name}: namespaces {prefix}-c, {prefix}-s")
        workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        processes: list[subprocess.Popen[bytes]] = []
        ifnames = tuple(f"{prefix}w{side}" for side in _SIDES)
        try:
            with veth_pair(prefix) as namespaces:
                try:
                    pids = self._start(namespaces, ifnames, workdir, processes)
                    yield Endpoints(namespaces[0], namespaces[1], TUNNEL[1], lambda: list(pids))
                finally:
                    for process in processes:
                        _stop(process)
        finally:
            for ifname in ifnames:
                with contextlib.suppress(FileNotFoundError):
                    (UAPI_DIR / f"{ifname}.sock").unlink()
            shutil.rmtree(workdir, ignore_errors=True)

    @staticmethod
    def _start(namespaces: tuple[str, str], ifnames: tuple[str, ...], workdir: Path,
               processes: list[subprocess.Popen[bytes]]) -> list[int]:
        """Start and configure wireguard-go at both ends; `processes` collects them for the caller to stop."""
        keys = (_wg_keypair(), _wg_keypair())
        for index, (namespace, ifname) in enumerate(zip(namespaces, ifnames, strict=True)):
            other = 1 - index
            log = workdir / f"{ifname}.log"
            with log.open("wb") as out:
                process = netns.popen(namespace, ["wireguard-go", "-f", ifname],
                                      stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            processes.append(process)
            _wait_for_uapi(ifname, process, log)
            config = workdir / f"{ifname}.conf"
            config.touch(mode=0o600)
            config.write_text(_wg_config(keys[index][0], keys[other][1], TUNNEL[other], UNDERLAY[other]))
            netns.run(namespace, ["wg", "setconf", ifname, str(config)])
            _ip("-n", namespace, "addr", "add", f"{TUNNEL[index]}/24", "dev", ifname)
            _ip("-n", namespace, "link", "set", ifname, "mtu", str(WG_MTU), "up")
        return [process.pid for process in processes]


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
