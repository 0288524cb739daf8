"""Two network namespaces joined by a veth pair: our engine in one, wireguard-go in the other.

Everything is named `cmwg<6 hex>...` and is removed by `close()`, which the fixtures call also when a
test fails. Processes are stopped by their own PIDs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.wait import wait_until

PYTHON = sys.executable
GO_UNDERLAY = "192.168.231.2"
OURS_UNDERLAY = "192.168.231.1"
GO_UNDERLAY6 = "fd00:231::2"
OURS_UNDERLAY6 = "fd00:231::1"
GO_TUNNEL = "10.232.0.2"
OURS_TUNNEL = "10.232.0.1"
OURS_PORT = 51871
GO_PORT = 51820


def run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout)


def wg_key() -> tuple[str, str]:
    private = run("wg", "genkey").stdout.strip()
    public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True)
    return private, public.stdout.strip()



@dataclass
class WgPair:
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cmwg-")))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ns_ours = f"cmwg{self.tag}-o"
        self.ns_go = f"cmwg{self.tag}-g"
        self.if_ours = f"cmwg{self.tag}p"
        self.if_go = f"cmwg{self.tag}w"
        self.socket = self.workdir / "ours.sock"
        self.in_ours = ["ip", "netns", "exec", self.ns_ours]
        self.ours_key, self.ours_pub = wg_key()
        self.go_key, self.go_pub = wg_key()
        self.psk = run("wg", "genpsk").stdout.strip()
        os.chmod(self.workdir, 0o700)

    # Setup and teardown

    def create_namespaces(self) -> None:
        veth_o, veth_g = f"cmwg{self.tag}o", f"cmwg{self.tag}g"
        run("ip", "netns", "add", self.ns_ours)
        run("ip", "netns", "add", self.ns_go)
        peer = ["peer", "name", veth_g, "netns", self.ns_go]
        run("ip", "link", "add", veth_o, "netns", self.ns_ours, "type", "veth", *peer)
        for ns, dev, address, address6 in (
            (self.ns_ours, veth_o, OURS_UNDERLAY, OURS_UNDERLAY6),
            (self.ns_go, veth_g, GO_UNDERLAY, GO_UNDERLAY6),
        ):
            run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            run("ip", "-n", ns, "addr", "add", f"{address6}/64", "dev", dev, "nodad")
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        for ns in (self.ns_ours, self.ns_go):
            run("ip", "netns", "del", ns, check=False)
        with contextlib.suppress(FileNotFoundError):
            Path(f"/var/run/wireguard/{self.if_go}.sock").unlink()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                return proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait(timeout=10)
        return proc.returncode

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        with log.open("ab") as out:
            proc = subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.logs.get(name)
        return path.read_text(errors="replace") if path and path.exists() else ""

    # wireguard-go

    def go_config(self, *, with_endpoint: bool, psk: bool = False, port: int = GO_PORT) -> str:
        lines = ["[Interface]", f"PrivateKey = {self.go_key}", f"ListenPort = {port}", "", "[Peer]"]
        lines += [f"PublicKey = {self.ours_pub}", f"AllowedIPs = {OURS_TUNNEL}/32"]
        if with_endpoint:
            lines.append(f"Endpoint = {OURS_UNDERLAY}:{OURS_PORT}")
        if psk:
            lines.append(f"PresharedKey = {self.psk}")
        return "\n".join(lines) + "\n"

    def start_go(self, config: str) -> None:
        self.spawn("go", "ip", "netns", "exec", self.ns_go, "wireguard-go", "-f", self.if_go)
        uapi = Path(f"/var/run/wireguard/{self.if_go}.sock")
        wait_until(uapi.exists, 10, "wireguard-go's UAPI socket")
        path = self.workdir / "go.conf"
        path.write_text(config)
        run("ip", "netns", "exec", self.ns_go, "wg", "setconf", self.if_go, str(path))
        run("ip", "-n", self.ns_go, "addr", "replace", f"{GO_TUNNEL}/24", "dev", self.if_go)
        run("ip", "-n", self.ns_go, "link", "set", self.if_go, "mtu", "1420", "up")

    def wg(self, *args: str) -> str:
        return run("ip", "netns", "exec", self.ns_go, "wg", *args).stdout

    def go_dump_peer(self) -> list[str]:
        """wg show dump's peer line: key, psk, endpoint, allowed, handshake, rx, tx, keepalive."""
        return self.wg("show", self.if_go, "dump").splitlines()[1].split("\t")

    # our engine

    def ours_config(
        self,
        *,
        with_endpoint: bool,
        psk: bool = False,
        keepalive: int = 0,
        endpoint: str = f"{GO_UNDERLAY}:{GO_PORT}",
    ) -> str:
        lines = ["[Interface]", f"PrivateKey = {self.ours_key}", f"ListenPort = {OURS_PORT}"]
        lines += [f"Address = {OURS_TUNNEL}/24", "MTU = 1420", "", "[Peer]", f"PublicKey = {self.go_pub}"]
        lines.append(f"AllowedIPs = {GO_TUNNEL}/32")
        if with_endpoint:
            lines.append(f"Endpoint = {endpoint}")
        if psk:
            lines.append(f"PresharedKey = {self.psk}")
        if keepalive:
            lines.append(f"PersistentKeepalive = {keepalive}")
        return "\n".join(lines) + "\n"

    def start_ours(self, config: str, *extra: str, default_socket: bool = False) -> subprocess.Popen[bytes]:
        """Our engine in its namespace; with `default_socket` it picks its control socket itself."""
        path = self.workdir / "ours.conf"
        path.write_text(config)
        path.chmod(0o600)
        command = [*self.in_ours, PYTHON, "-m", "ciphermesh", "wireguard", "up", self.if_ours]
        socket_args = [] if default_socket else ["--socket", str(self.socket)]
        up = f"{self.if_ours} up:"
        before = self.log("ours").count(up)  # the log keeps earlier runs of this test
        proc = self.spawn("ours", *command, "--config", str(path), *socket_args, *extra)
        started = lambda: self.log("ours").count(up) > before or proc.poll() is not None  # noqa: E731
        wait_until(started, 20, "our engine to come up")
        assert proc.poll() is None, self.log("ours")
        return proc

    def show(self, *args: str, default_socket: bool = False) -> subprocess.CompletedProcess[str]:
        command = [*self.in_ours, PYTHON, "-m", "ciphermesh", "wireguard", "show", self.if_ours]
        socket_args = [] if default_socket else ["--socket", str(self.socket)]
        return run(*command, *socket_args, *args, check=False)

    def status(self) -> dict[str, Any]:
        result = self.show("-o", "json")
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    # traffic

    def ping(self, ns: str, dst: str, count: int = 3, deadline: int = 10) -> subprocess.CompletedProcess[str]:
        options = ["-n", "-q", "-c", str(count), "-i", "0.2", "-w", str(deadline)]
        return run("ip", "netns", "exec", ns, "ping", *options, dst, check=False, timeout=deadline + 10)

    def iperf(self, server_ns: str, client_ns: str, dst: str, seconds: int = 3) -> dict[str, Any]:
        port = "5299"
        self.spawn("iperf-server", "ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", port)
        listening = ["ip", "netns", "exec", server_ns, "ss", "-H", "-ltn", f"sport = :{port}"]
        wait_until(lambda: bool(run(*listening, check=False).stdout.strip()), 20, "the iperf3 server")
        try:
            client = ["iperf3", "-c", dst, "-p", port, "-t", str(seconds), "-J"]
            result = run("ip", "netns", "exec", client_ns, *client, check=False, timeout=seconds + 30)
        finally:
            self.stop("iperf-server")
        return dict(json.loads(result.stdout))
