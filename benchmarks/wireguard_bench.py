"""WireGuard throughput, CPU and latency: wireguard-go <-> wireguard-go against our engine <-> wireguard-go.

Builds two pairs of network namespaces joined by veth (names start with `cmwgb`): wireguard-go in both
ends of one, our engine and wireguard-go in the other. For each path it measures one iperf3 TCP stream
(Gbit/s, retransmits), the CPU time of the two tunnel processes over that stream (utime + stime from
/proc/<pid>/stat, summed over both ends, per GB received), and the ping RTT. Repeats are interleaved and
the table shows medians. Run as root:

    .venv/bin/python benchmarks/wireguard_bench.py --seconds 10 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TUNNEL_MTU = "1420"


def run(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout)


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait_for_path(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear within {timeout}s")
        time.sleep(0.05)


@dataclass
class End:
    """One tunnel end: its namespace, interface, underlay and tunnel addresses, and process."""

    ns: str
    ifname: str
    underlay: str
    tunnel: str
    private: str = ""
    public: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@dataclass
class Lab:
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cmwgb-")))
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    go_sockets: list[Path] = field(default_factory=list)

    def pair(self, index: int) -> tuple[End, End]:
        tag = f"cmwgb{secrets.token_hex(2)}{index}"
        left = End(f"{tag}-l", f"{tag}t", f"192.168.{240 + index}.1", f"10.{240 + index}.0.1")
        right = End(f"{tag}-r", f"{tag}u", f"192.168.{240 + index}.2", f"10.{240 + index}.0.2")
        for end in (left, right):
            run("ip", "netns", "add", end.ns)
            self.namespaces.append(end.ns)
            end.private = run("wg", "genkey").stdout.strip()
            end.public = subprocess.run(
                ["wg", "pubkey"], input=end.private, capture_output=True, text=True, check=True
            ).stdout.strip()
        run("ip", "link", "add", f"{tag}a", "netns", left.ns, "type", "veth", "peer", "name", f"{tag}b",
            "netns", right.ns)  # fmt: skip
        for end, dev in ((left, f"{tag}a"), (right, f"{tag}b")):
            run("ip", "-n", end.ns, "addr", "add", f"{end.underlay}/24", "dev", dev)
            run("ip", "-n", end.ns, "link", "set", dev, "up")
            run("ip", "-n", end.ns, "link", "set", "lo", "up")
        return left, right

    def config(self, me: End, other: End, port: int, other_port: int, *, quick: bool) -> str:
        lines = ["[Interface]", f"PrivateKey = {me.private}", f"ListenPort = {port}"]
        if quick:
            lines += [f"Address = {me.tunnel}/24", f"MTU = {TUNNEL_MTU}"]
        lines += ["", "[Peer]", f"PublicKey = {other.public}", f"AllowedIPs = {other.tunnel}/32"]
        lines.append(f"Endpoint = {other.underlay}:{other_port}")
        return "\n".join(lines) + "\n"

    def start_go(self, me: End, other: End, port: int, other_port: int) -> None:
        log = (self.workdir / f"{me.ifname}.log").open("wb")
        me.proc = subprocess.Popen(["ip", "netns", "exec", me.ns, "wireguard-go", "-f", me.ifname],
                                   stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        self.procs.append(me.proc)
        uapi = Path(f"/var/run/wireguard/{me.ifname}.sock")
        self.go_sockets.append(uapi)
        wait_for_path(uapi, 10)
        path = self.workdir / f"{me.ifname}.conf"
        path.write_text(self.config(me, other, port, other_port, quick=False))
        run("ip", "netns", "exec", me.ns, "wg", "setconf", me.ifname, str(path))
        run("ip", "-n", me.ns, "addr", "add", f"{me.tunnel}/24", "dev", me.ifname)
        run("ip", "-n", me.ns, "link", "set", me.ifname, "mtu", TUNNEL_MTU, "up")

    def start_ours(self, me: End, other: End, port: int, other_port: int, extra: list[str]) -> None:
        path = self.workdir / f"{me.ifname}.conf"
        path.write_text(self.config(me, other, port, other_port, quick=True))
        path.chmod(0o600)
        control = self.workdir / f"{me.ifname}.sock"
        log = (self.workdir / f"{me.ifname}.log").open("wb")
        me.proc = subprocess.Popen(
            ["ip", "netns", "exec", me.ns, sys.executable, "-m", "ciphermesh", "wireguard", "up", me.ifname,
             "--config", str(path), "--socket", str(control), "--log-level", "warning", *extra],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.procs.append(me.proc)
        wait_for_path(control, 20)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        for ns in self.namespaces:
            run("ip", "netns", "del", ns, check=False)
        for uapi in self.go_sockets:
            with contextlib.suppress(FileNotFoundError):
                uapi.unlink()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    current = Lab()
    try:
        yield current
    finally:
        current.close()


@dataclass
class Sample:
    gbit: float
    cpu_per_gb: float
    cpu_sender_per_gb: float
    cpu_receiver_per_gb: float
    retransmits: int
    rtt_ms: float


def ping_rtt(src: End, dst: End, count: int) -> float:
    options = ["-n", "-q", "-c", str(count), "-i", "0.05"]
    out = run("ip", "netns", "exec", src.ns, "ping", *options, dst.tunnel).stdout
    match = re.search(r"= [\d.]+/([\d.]+)/", out)
    if match is None:
        raise RuntimeError(f"ping from {src.ns} failed: {out}")
    return float(match.group(1))


def measure(sender: End, receiver: End, seconds: int, ping_count: int) -> Sample:
    rtt = ping_rtt(sender, receiver, ping_count)
    server = subprocess.Popen(["ip", "netns", "exec", receiver.ns, "iperf3", "-s", "-1", "-p", "5301"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        listening = ["ip", "netns", "exec", receiver.ns, "ss", "-H", "-ltn", "sport = :5301"]
        deadline = time.monotonic() + 20
        while not run(*listening, check=False).stdout.strip():
            if time.monotonic() > deadline:
                raise RuntimeError("the iperf3 server did not start listening")
            time.sleep(0.05)
        before = (cpu_seconds(sender.pid), cpu_seconds(receiver.pid))
        client = run("ip", "netns", "exec", sender.ns, "iperf3", "-c", receiver.tunnel, "-p", "5301",
                     "-t", str(seconds), "-J", timeout=seconds + 60)  # fmt: skip
        after = (cpu_seconds(sender.pid), cpu_seconds(receiver.pid))
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    report = json.loads(client.stdout)
    received = report["end"]["sum_received"]
    gigabytes = received["bytes"] / 1e9
    cpu_sender, cpu_receiver = after[0] - before[0], after[1] - before[1]
    return Sample(
        gbit=received["bits_per_second"] / 1e9,
        cpu_per_gb=(cpu_sender + cpu_receiver) / gigabytes,
        cpu_sender_per_gb=cpu_sender / gigabytes,
        cpu_receiver_per_gb=cpu_receiver / gigabytes,
        retransmits=int(report["end"]["sum_sent"].get("retransmits", 0)),
        rtt_ms=rtt,
    )


def main(argv: list[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--seconds", type=int, default=10, help="iperf3 duration per sample")
    parser.add_argument("--repeats", type=int, default=3, help="samples per path (median reported)")
    parser.add_argument("--ping-count", type=int, default=20)
    parser.add_argument("--engine-arg", action="append", default=[], help="extra argument for our engine")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("wireguard_bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    with lab() as current:
        go_a, go_b = current.pair(0)
        current.start_go(go_a, go_b, 51820, 51821)
        current.start_go(go_b, go_a, 51821, 51820)
        ours, go_c = current.pair(1)
        current.start_ours(ours, go_c, 51871, 51820, args.engine_arg)
        current.start_go(go_c, ours, 51820, 51871)
        paths = {
            "wireguard-go -> wireguard-go": (go_a, go_b),
            "ciphermesh -> wireguard-go": (ours, go_c),
            "wireguard-go -> ciphermesh": (go_c, ours),
        }
        for sender, receiver in paths.values():
            ping_rtt(sender, receiver, 3)  # handshakes done before anything is timed
        samples: dict[str, list[Sample]] = {name: [] for name in paths}
        for repeat in range(args.repeats):
            for name, (sender, receiver) in paths.items():
                sample = measure(sender, receiver, args.seconds, args.ping_count)
                samples[name].append(sample)
                print(f"# {repeat + 1}/{args.repeats} {name}: {sample}", file=sys.stderr, flush=True)
    print_table(samples, args)
    return 0


def print_table(samples: dict[str, list[Sample]], args: argparse.Namespace) -> None:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    print(f"WireGuard: one TCP stream ({args.seconds} s), ping; medians of {args.repeats}; MTU {TUNNEL_MTU}")
    print()
    columns = ["path (sender -> receiver)", "Gbit/s", "CPU-s/GB both ends", "sender", "receiver"]
    columns += ["retransmits", "RTT ms"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for name, values in samples.items():
        print(
            f"| {name} | {med([s.gbit for s in values]):.2f} | {med([s.cpu_per_gb for s in values]):.1f}"
            f" | {med([s.cpu_sender_per_gb for s in values]):.1f}"
            f" | {med([s.cpu_receiver_per_gb for s in values]):.1f}"
            f" | {int(med([float(s.retransmits) for s in values]))} | {med([s.rtt_ms for s in values]):.3f} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
