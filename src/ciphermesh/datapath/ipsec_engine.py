"""The userspace IPsec engine: packets from a TUN device out as ESP on a raw protocol-50 socket, and back.

The kernel adds and strips the outer IPv4 header (router IP to router IP) and routes ESP through
cilium_vxlan; the engine only seals and opens. One thread runs `run()`; `apply()` and `status()` may be
called from any other thread.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
from typing import Any

from ciphermesh.datapath.ipsec_engine_drops import EngineDrop, new_drop_counts
from ciphermesh.datapath.ipsec_state import IPsecEngineState
from ciphermesh.datapath.ipsec_tables import IPsecTables, SAParams
from ciphermesh.datapath.tun import TunDevice
from ciphermesh.esp import PROTO_ESP, Counters, Drop

SO_SNDBUFFORCE = 32  # <asm-generic/socket.h>; Python's socket module does not export these
SO_RCVBUFFORCE = 33
IP_MTU_DISCOVER = 10  # <linux/in.h>
IP_PMTUDISC_DO = 2
DEFAULT_SOCKET_BUFFER = 8 << 20
DEFAULT_BATCH = 64
MAX_PACKET = 65535
_POLL_SECONDS = 0.2

_SEND_ERROR = EngineDrop.EngineOutSendError
_DELIVER_ERROR = EngineDrop.EngineInDeliverError
_READ_ERROR = EngineDrop.EngineReadError
_INTERNAL_ERROR = EngineDrop.EngineInternalError
_DROP_NAMES = frozenset(Drop)


def open_esp_socket(buffer_bytes: int = DEFAULT_SOCKET_BUFFER) -> socket.socket:
    """A raw IPv4 protocol-50 socket with large buffers; blocking, so a full send buffer slows senders."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, PROTO_ESP)
    try:
        # The *FORCE options pass net.core.[rw]mem_max (we run with CAP_NET_ADMIN).
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer_bytes)
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, buffer_bytes)
        # DF and never fragment locally: the TUN MTU leaves room for ESP, and fragments of a misrouted
        # ESP packet would come back through the TUN as new packets.
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
    except OSError:
        sock.close()
        raise
    return sock


class IPsecEngine:
    """Seals TUN packets for the peer owning their destination; opens ESP from peers into the TUN."""

    def __init__(
        self,
        tun: TunDevice,
        *,
        esp_socket: socket.socket | None = None,
        params: SAParams | None = None,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self._tun = tun
        self._sock = esp_socket if esp_socket is not None else open_esp_socket()
        self._params = params or SAParams()
        self._batch = batch
        self._lock = threading.Lock()
        self._retired = Counters()
        self._tables = IPsecTables.empty(new_drop_counts())

    def apply(self, state: IPsecEngineState) -> None:
        """Converge to `state`: unchanged SAs keep their counters, changed ones are replaced, others dropped.

        Raises ValueError (e.g. an unsupported algorithm) before anything changes.
        """
        with self._lock:
            previous = self._tables
            tables = IPsecTables.build(state, self._params, previous)
            self._tables = tables
            for sa in tables.retired_from(previous):
                self._retired.add(sa.counters)

    def run(self, stop: threading.Event) -> None:
        """Move packets until `stop` is set, draining up to `batch` packets per source and wakeup."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._tun.fileno(), selectors.EVENT_READ, self._drain_tun)
            selector.register(self._sock, selectors.EVENT_READ, self._drain_esp)
            while not stop.is_set():
                for key, _ in selector.select(_POLL_SECONDS):
                    key.data()

    def _drain_tun(self) -> None:
        tables = self._tables
        counts = tables.counts
        fd = self._tun.fileno()
        sendmsg = self._sock.sendmsg
        ancillary = tables.ancillary
        for _ in range(self._batch):
            try:
                packet = os.read(fd, MAX_PACKET)
            except BlockingIOError:
                return
            except OSError:
                counts[_READ_ERROR] += 1
                return
            try:
                sealed = tables.seal(packet)
                if sealed is None:
                    continue
                path, esp = sealed
                sendmsg((esp,), ancillary, 0, path.sockaddr)
            except OSError:
                counts[_SEND_ERROR] += 1
                continue
            except Exception:
                # One bad packet must not stop the node's datapath; the counter makes the bug visible.
                counts[_INTERNAL_ERROR] += 1
                continue
            stats = path.stats
            stats.packets_out += 1
            stats.bytes_out += len(packet)

    def _drain_esp(self) -> None:
        tables = self._tables
        counts = tables.counts
        fd = self._tun.fileno()
        recv = self._sock.recv
        for _ in range(self._batch):
            try:
                packet = recv(MAX_PACKET, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                counts[_READ_ERROR] += 1
                return
            try:
                opened = tables.open(packet)
                if opened is None:
                    continue
                path, inner = opened
                os.write(fd, inner)
            except OSError:
                counts[_DELIVER_ERROR] += 1
                continue
            except Exception:
                counts[_INTERNAL_ERROR] += 1
                continue
            stats = path.stats
            stats.packets_in += 1
            stats.bytes_in += len(inner)

    def status(self) -> dict[str, Any]:
        """JSON-friendly: keys in use, highest outbound sequence number, errors by name, and per peer."""
        with self._lock:
            tables = self._tables
            totals = Counters.total([self._retired, tables.sad.counters, *tables.sa_counters()])
        errors = {str(name): totals[name] for name in _DROP_NAMES}
        for name, value in tables.counts.items():
            errors[str(name)] = errors.get(str(name), 0) + value
        out_sas = [path.out_sa for path in tables.paths if path.out_sa is not None]
        return {
            "localRouterIP": str(tables.local_router_ip) if tables.local_router_ip is not None else None,
            "keysInUse": tables.keys_in_use(),
            "maxSeq": max((sa.seq for sa in out_sas), default=0),
            "seqLimit": (1 << 64) - 1 if self._params.esn else (1 << 32) - 1,
            "rekeyNeeded": any(sa.exhausted for sa in out_sas),
            "errorCount": sum(errors.values()),
            "errors": {name: value for name, value in sorted(errors.items()) if value},
            "peers": [
                {
                    "routerIP": str(path.peer.router_ip),
                    "podCIDRs": [str(cidr) for cidr in path.peer.pod_cidrs],
                    "outSPI": path.peer.out_spi,
                    "outSeq": path.out_sa.seq if path.out_sa is not None else None,
                    "outExhausted": path.out_sa is not None and path.out_sa.exhausted,
                    "inSPIs": sorted(path.in_sas),
                    "packetsOut": path.stats.packets_out,
                    "bytesOut": path.stats.bytes_out,
                    "packetsIn": path.stats.packets_in,
                    "bytesIn": path.stats.bytes_in,
                }
                for path in tables.paths
            ],
        }

    def close(self) -> None:
        """Close the raw socket and the TUN device."""
        self._sock.close()
        self._tun.close()

    def __enter__(self) -> IPsecEngine:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
