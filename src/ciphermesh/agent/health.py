"""Node health as Cilium's does it: an HTTP `GET /hello` on routerIP:4240 and ICMP, probed per peer."""

from __future__ import annotations

import http.client
import http.server
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ciphermesh.inet import internet_checksum

HEALTH_PORT = 4240
PROBE_INTERVAL = 15.0


class _HelloHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/hello":
            self.send_error(404)
            return
        body = b"hello\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Probes arrive every few seconds from every peer: keep them out of the agent's log."""


class HealthServer:
    """Answers `GET /hello` on the node's router IP, as cilium-health's endpoint does."""

    def __init__(self, address: str, port: int = HEALTH_PORT) -> None:
        self._server = http.server.ThreadingHTTPServer((address, port), _HelloHandler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def probe_http(address: str, port: int = HEALTH_PORT, timeout: float = 2.0) -> float | None:
    """Round trip of one `GET /hello` in seconds, or None if it failed."""
    start = time.monotonic()
    connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        connection.request("GET", "/hello")
        response = connection.getresponse()
        ok = response.status == 200 and response.read() == b"hello\n"
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()
    return time.monotonic() - start if ok else None


def probe_icmp(address: str, timeout: float = 2.0, source: str | None = None) -> float | None:
    """Round trip of one ICMP echo in seconds, or None without a reply."""
    ident = os.getpid() & 0xFFFF
    seq = int(time.monotonic() * 1000) & 0xFFFF
    payload = b"ciphermesh-health"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    packet = struct.pack("!BBHHH", 8, 0, internet_checksum(header + payload), ident, seq) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        if source:
            sock.bind((source, 0))
        start = time.monotonic()
        try:
            sock.sendto(packet, (address, 0))
        except OSError:
            return None
        deadline = start + timeout
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([sock], [], [], left)
            if not readable:
                break
            data, (peer, _) = sock.recvfrom(2048)
            ihl = (data[0] & 0x0F) * 4
            if peer != address or len(data) < ihl + 8:
                continue
            kind, _, _, reply_ident, reply_seq = struct.unpack_from("!BBHHH", data, ihl)
            if kind == 0 and reply_ident == ident and reply_seq == seq:
                return time.monotonic() - start
    return None


@dataclass(frozen=True)
class PeerHealth:
    """The last probe of one peer."""

    node: str
    address: str
    http_rtt: float | None
    icmp_rtt: float | None
    probed_at: float

    @property
    def reachable(self) -> bool:
        return self.http_rtt is not None and self.icmp_rtt is not None

    def as_dict(self) -> dict[str, object]:
        return {
            "node": self.node,
            "address": self.address,
            "reachable": self.reachable,
            "httpRTTms": None if self.http_rtt is None else round(self.http_rtt * 1000, 3),
            "icmpRTTms": None if self.icmp_rtt is None else round(self.icmp_rtt * 1000, 3),
            "probedAt": self.probed_at,
        }


PROBE_WORKERS = 16


class HealthProber:
    """Probes every peer's health endpoint on a fixed interval, or at once when asked."""

    def __init__(
        self,
        peers: Callable[[], Iterable[tuple[str, str]]],
        *,
        source: str | None = None,
        interval: float = PROBE_INTERVAL,
    ) -> None:
        self._peers = peers
        self._source = source
        self._interval = interval
        self._results: dict[str, PeerHealth] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def probe_now(self) -> None:
        self._wake.set()

    def results(self) -> list[PeerHealth]:
        return sorted(self._results.values(), key=lambda result: result.node)

    def probe_all(self) -> None:
        peers = dict(self._peers())
        # Side by side: a silent peer costs both timeouts, and a few dozen of them in a row made one
        # round outlast a 40-node lab's start-up.
        with ThreadPoolExecutor(max_workers=max(1, min(PROBE_WORKERS, len(peers)))) as pool:
            results = list(pool.map(lambda peer: self._probe(*peer), peers.items()))
        # A new dict, swapped in whole, so `results()` from another thread never sees it half-built.
        self._results = {result.node: result for result in results}

    def _probe(self, node: str, address: str) -> PeerHealth:
        http_rtt = probe_http(address)
        return PeerHealth(node, address, http_rtt, probe_icmp(address, source=self._source), time.time())

    def _settled(self) -> bool:
        """Every current peer was probed at its current address and answered."""
        probed = {r.node: r.address for r in self._results.values() if r.reachable}
        return bool(probed) and probed == dict(self._peers())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.probe_all()
            # Until every peer, including one that joined since, answers, probe again within a second:
            # a node coming up should not wait a whole interval to be seen.
            if not self._settled():
                self._wake.wait(1.0)
            else:
                deadline = time.monotonic() + self._interval
                while self._settled() and (left := deadline - time.monotonic()) > 0:
                    if self._wake.wait(min(1.0, left)):
                        break
            self._wake.clear()
