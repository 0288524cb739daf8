"""tcpdump on a lab's underlay bridge, writing a pcap file: started before traffic, stopped after."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ciphermesh.lab import netns
from ciphermesh.lab.names import underlay_netns
from ciphermesh.lab.pace import scaled

UNDERLAY_BRIDGE = "br0"
START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0
CAPTURE_BUFFER_KIB = 65536
# IEEE 802 local experimental EtherType: the end marker is a frame every node's stack drops unread.
END_MARKER_ETHERTYPE = 0x88B5
_POLL = 0.02
_COUNT = re.compile(rb"^(\d+) packets? (captured|received by filter|dropped by kernel)", re.MULTILINE)


class CaptureError(RuntimeError):
    """tcpdump could not start, or did not stop and flush its file."""


@dataclass(frozen=True)
class CaptureStats:
    """tcpdump's own counts at exit; drops mean the capture cannot prove an absence."""

    captured: int
    dropped_by_kernel: int

    def as_dict(self) -> dict[str, int]:
        return {"captured": self.captured, "droppedByKernel": self.dropped_by_kernel}


class UnderlayCapture:
    """One tcpdump process on `br0` of the lab's underlay namespace."""

    def __init__(self, lab: str, path: Path, snaplen: int = 0) -> None:
        self.lab = lab
        self.path = path
        self.snaplen = snaplen
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr = b""

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start tcpdump and return once it says it is listening (so no early packet is missed)."""
        # --immediate-mode: without it packets still in the kernel's ring block are lost at SIGINT.
        # -B: a 64 MiB ring, so a busy 2-core machine drops fewer packets (a drop fails the verdict).
        argv = ["tcpdump", "-n", "-i", UNDERLAY_BRIDGE, "--immediate-mode", "-U", "-Z", "root",
                "-B", str(CAPTURE_BUFFER_KIB), "-s", str(self.snaplen), "-w", str(self.path)]
        try:
            self._process = netns.popen(underlay_netns(self.lab), argv, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except (OSError, netns.NetnsError) as exc:
            raise CaptureError(f"cannot start tcpdump on the underlay of lab {self.lab}: {exc}") from exc
        deadline = time.monotonic() + timeout
        while b"listening on" not in self._stderr:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read_stderr(remaining):
                self._abort()
                raise CaptureError(f"tcpdump on the underlay of lab {self.lab} did not start: "
                                   f"{self._last_line() or 'no output'}")

    def _read_stderr(self, timeout: float) -> bool:
        """Read what tcpdump has written to stderr; False once it has closed it (exited)."""
        assert self._process is not None and self._process.stderr is not None
        fd = self._process.stderr.fileno()
        readable, _, _ = select.select([fd], [], [], timeout)
        if not readable:
            return True
        chunk = os.read(fd, 4096)
        self._stderr += chunk
        return bool(chunk)

    def _abort(self) -> None:
        assert self._process is not None
        if self._process.poll() is None:
            self._process.kill()
        _, rest = self._process.communicate()
        self._stderr += rest or b""

    def _last_line(self) -> str:
        lines = [line for line in self._stderr.decode(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""

    def _send_end_marker(self, token: bytes) -> None:
        with netns.entered(underlay_netns(self.lab)):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        with sock:
            sock.bind((UNDERLAY_BRIDGE, 0))
            mac = sock.getsockname()[4]
            sock.send(b"\xff" * 6 + mac + struct.pack("!H", END_MARKER_ETHERTYPE) + token)

    def _drain(self, timeout: float) -> bool:
        """Send an end marker out of `br0` and wait until tcpdump has written it; False if it never did.

        tcpdump stops at SIGINT without reading what is still in its ring, so the last packets of the
        traffic would be missing; the kernel hands packets over in order, so once the marker is in the
        file everything sent before it is too.
        """
        token = b"cm-capture-end " + secrets.token_hex(15).encode()
        try:
            self._send_end_marker(token)
        except (OSError, netns.NetnsError):
            return False
        deadline = time.monotonic() + timeout
        seen = 0
        with open(self.path, "rb") as pcap:
            while time.monotonic() < deadline and self.running:
                pcap.seek(max(0, seen - len(token)))
                tail = pcap.read()
                if token in tail:
                    return True
                seen = pcap.tell()
                time.sleep(_POLL)
        return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> CaptureStats:
        """Drain tcpdump, SIGINT it, wait for it to flush and exit (kill it if it will not); its counts."""
        process = self._process
        if process is None:
            raise CaptureError("the capture was never started")
        drained = not self.running or self._drain(scaled(timeout))
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            _, rest = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise CaptureError(f"tcpdump did not stop within {timeout:g} s; killed") from None
        self._stderr += rest or b""
        counts = {kind: int(number) for number, kind in _COUNT.findall(self._stderr)}
        if b"captured" not in counts:
            raise CaptureError(f"tcpdump exited {process.returncode}: {self._last_line() or 'no output'}")
        if not drained:
            raise CaptureError(f"tcpdump did not write the end marker within {scaled(timeout):g} s: "
                               "the capture may lack the last packets")
        return CaptureStats(counts[b"captured"], counts.get(b"dropped by kernel", 0))

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None


@contextlib.contextmanager
def underlay_capture(lab: str, path: Path) -> Iterator[UnderlayCapture]:
    """A started capture, stopped on the way out whatever happens (also on Ctrl-C)."""
    capture = UnderlayCapture(lab, path)
    capture.start()
    try:
        yield capture
    finally:
        if capture.running:
            with contextlib.suppress(CaptureError):
                capture.stop()
