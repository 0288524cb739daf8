"""Probes from inside a pod: ping with a payload pattern, and TCP/UDP echo of a marker payload."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from dataclasses import dataclass

from ciphermesh.lab import netns

PING_PATTERN_BYTES = 16  # the most iputils ping accepts for -p
UDP_RETRY_INTERVAL = 0.5
_RTT = re.compile(r"time[=<]([0-9.]+) ms")


@dataclass(frozen=True)
class ProbeOutcome:
    """Whether one probe got its answer, how fast, or why not."""

    ok: bool
    rtt_ms: float | None = None
    error: str | None = None


def _failed(error: str) -> ProbeOutcome:
    return ProbeOutcome(False, None, error)


def _socket_error(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc)


def ping(pod_netns: str, dst: str, pattern: bytes, timeout: float) -> ProbeOutcome:
    """One ICMP echo from the pod to `dst`, its payload filled with `pattern`."""
    if not 1 <= len(pattern) <= PING_PATTERN_BYTES:
        raise ValueError(f"a ping pattern has 1 to {PING_PATTERN_BYTES} bytes, not {len(pattern)}")
    argv = ["ping", "-n", "-c", "1", "-W", f"{timeout:g}", "-p", pattern.hex(), dst]
    try:
        result = netns.run(pod_netns, argv, check=False, timeout=timeout + 2)
    except subprocess.TimeoutExpired:
        return _failed(f"ping did not finish within {timeout + 2:g} s")
    except netns.NetnsError as exc:
        return _failed(str(exc))
    match = _RTT.search(result.stdout)
    if result.returncode == 0 and match:
        return ProbeOutcome(True, float(match.group(1)))
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("From ")]
    reason = lines[0] if lines else f"no reply within {timeout:g} s"
    return _failed(reason)


def _pod_socket(pod_netns: str, kind: socket.SocketKind) -> socket.socket:
    # A socket belongs to the namespace it was created in, wherever it is used afterwards.
    with netns.entered(pod_netns):
        return socket.socket(socket.AF_INET, kind)


def tcp_echo(pod_netns: str, dst: str, port: int, marker: bytes, timeout: float) -> ProbeOutcome:
    """Connect from the pod, send `marker`, and read it back whole; RTT from connect to the last byte."""
    try:
        sock = _pod_socket(pod_netns, socket.SOCK_STREAM)
    except (OSError, netns.NetnsError) as exc:
        return _failed(f"cannot open a socket in {pod_netns}: {exc}")
    with sock:
        deadline = time.monotonic() + timeout
        start = time.monotonic()
        stage = "connect"
        try:
            sock.settimeout(timeout)
            sock.connect((dst, port))
            stage = "echo"
            sock.sendall(marker)
            received = b""
            while len(received) < len(marker):
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(len(marker) - len(received))
                if not chunk:
                    return _failed(f"connection closed after {len(received)} of {len(marker)} bytes")
                received += chunk
        except OSError as exc:
            return _failed(f"{stage}: {_socket_error(exc)}")
        rtt = (time.monotonic() - start) * 1000
    if received != marker:
        return _failed("the echo differs from what was sent")
    return ProbeOutcome(True, round(rtt, 3))


def udp_echo(pod_netns: str, dst: str, port: int, marker: bytes, timeout: float) -> ProbeOutcome:
    """Send `marker` from the pod until it comes back from `dst` or time runs out (UDP may drop one)."""
    try:
        sock = _pod_socket(pod_netns, socket.SOCK_DGRAM)
    except (OSError, netns.NetnsError) as exc:
        return _failed(f"cannot open a socket in {pod_netns}: {exc}")
    deadline = time.monotonic() + timeout
    error = f"no echo within {timeout:g} s"
    with sock:
        try:
            sock.connect((dst, port))
            while (remaining := deadline - time.monotonic()) > 0:
                sent = time.monotonic()
                sock.send(marker)
                wait_until = sent + min(UDP_RETRY_INTERVAL, remaining)
                while (left := wait_until - time.monotonic()) > 0:
                    sock.settimeout(left)
                    try:
                        reply = sock.recv(len(marker) + 1)
                    except TimeoutError:
                        break
                    if reply == marker:
                        return ProbeOutcome(True, round((time.monotonic() - sent) * 1000, 3))
        except OSError as exc:
            error = _socket_error(exc)
    return _failed(error)


def wait_listening(pod_netns: str, port: int, timeout: float) -> bool:
    """Whether something in the pod accepts TCP connections on `port` (asked on loopback) in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            sock = _pod_socket(pod_netns, socket.SOCK_STREAM)
        except (OSError, netns.NetnsError):
            return False
        with sock:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                sock.connect(("127.0.0.1", port))
                return True
            except OSError:
                pass
        time.sleep(0.05)
    return False
