"""The userspace IPsec engine: packets from a TUN device out as ESP on a raw protocol-50 socket, and back.

The kernel adds and strips the outer IPv4 header (router IP to router IP) and routes ESP through
cilium_vxlan; the engine only seals and opens. One thread runs `run()`; `apply()` and `status()` may be
called from any other thread. On a TUN opened with vnet_hdr (`IPsecEngine.open`), the packets opened in
one wakeup are written with runs of TCP segments merged into one GSO packet (`tcp_coalesce`).
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
from typing import Any

from ciphermesh.datapath.desired import IPsecEngineState
from ciphermesh.datapath.userspace.ipsec.drops import EngineDrop, new_drop_counts
from ciphermesh.datapath.userspace.ipsec.sa_list import held_sas
from ciphermesh.datapath.userspace.ipsec.tables import IPsecTables, SAParams
from ciphermesh.datapath.userspace.tcp_coalesce import VNET_HDR_LEN, coalesce
from ciphermesh.datapath.userspace.tun import TunDevice
from ciphermesh.esp import PROTO_ESP, Counters, Drop
from ciphermesh.esp.ledger import SALedger
from ciphermesh.rtnl.ownership import IPSEC_ENCRYPTED_MARK

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
_OFFLOADED = EngineDrop.EngineTunOffloaded
_DROP_NAMES = frozenset(Drop)


def open_esp_socket(buffer_bytes: int = DEFAULT_SOCKET_BUFFER) -> socket.socket:
    """A raw IPv4 protocol-50 socket with large buffers; blocking, so a full send buffer slows senders."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, PROTO_ESP)
    try:
        # Cilium's "encrypted" mark: node encryption's rule lets marked packets (and VXLAN around them)
        # bypass the engine instead of looping back into it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, IPSEC_ENCRYPTED_MARK)
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
        ledger: SALedger | None = None,
    ) -> None:
        """`ledger` must live as long as the keys do (the agent's boot ID); by default, the engine's life."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self._tun = tun
        self._sock = esp_socket if esp_socket is not None else open_esp_socket()
        self._params = params or SAParams()
        self._batch = batch
        self._lock = threading.Lock()
        self._tables = IPsecTables.empty(new_drop_counts(), ledger)

    @classmethod
    def open(
        cls,
        tun_name: str,
        *,
        offload: bool = True,
        esp_socket: socket.socket | None = None,
        params: SAParams | None = None,
        batch: int = DEFAULT_BATCH,
        ledger: SALedger | None = None,
    ) -> IPsecEngine:
        """An engine on TUN device `tun_name` (created if missing); `offload` opens it with vnet_hdr."""
        tun = TunDevice(tun_name, vnet_hdr=offload)
        try:
            return cls(tun, esp_socket=esp_socket, params=params, batch=batch, ledger=ledger)
        except BaseException:
            tun.close()
            raise

    def apply(self, state: IPsecEngineState) -> None:
        """Converge to `state`: an SA under a key held before goes on with its counters, others are new.

        Raises ValueError (e.g. an unsupported algorithm) before anything changes.
        """
        with self._lock:
            self._tables = IPsecTables.build(state, self._params, self._tables)

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
        vnet = self._tun.vnet_hdr
        read = os.read
        for _ in range(self._batch):
            try:
                packet = read(fd, MAX_PACKET)
            except BlockingIOError:
                return
            except OSError:
                counts[_READ_ERROR] += 1
                return
            if vnet:
                # Without TUNSETOFFLOAD the kernel hands over complete packets: flags and GSO type are 0.
                if packet[0] or packet[1]:
                    counts[_OFFLOADED] += 1
                    continue
                packet = packet[VNET_HDR_LEN:]
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
        open_ = tables.open
        vnet = self._tun.vnet_hdr
        opened_packets: list[bytes] = []
        for _ in range(self._batch):
            try:
                packet = recv(MAX_PACKET, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                counts[_READ_ERROR] += 1
                break
            try:
                opened = open_(packet)
                if opened is None:
                    continue
                path, inner = opened
                if vnet:
                    opened_packets.append(inner)
                else:
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
        if opened_packets:
            self._deliver(fd, opened_packets)

    def _deliver(self, fd: int, packets: list[bytes]) -> None:
        """Write opened packets to the vnet_hdr TUN, TCP runs merged; a failed write counts its segments."""
        counts = self._tables.counts
        writev = os.writev
        try:
            frames = coalesce(packets)
        except Exception:
            counts[_INTERNAL_ERROR] += len(packets)
            return
        for frame in frames:
            try:
                writev(fd, frame)
            except OSError:
                # A merged frame carries its segments: each one is a lost packet.
                counts[_DELIVER_ERROR] += len(frame) - 3 if len(frame) > 2 else 1

    def status(self) -> dict[str, Any]:
        """JSON-friendly: keys in use, highest outbound sequence number, errors by name, and per peer."""
        with self._lock:
            tables = self._tables
            ledger = tables.ledger
            totals = Counters.total([ledger.retired, tables.sad.counters, *ledger.counters()])
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

    def security_associations(self, reveal: bool = False) -> list[dict[str, Any]]:
        """The SAs this engine holds (direction, outer addresses, SPI); key hex only with `reveal`."""
        with self._lock:
            tables = self._tables
        return held_sas(tables, reveal)

    def close(self) -> None:
        """Close the raw socket and the TUN device."""
        self._sock.close()
        self._tun.close()

    def __enter__(self) -> IPsecEngine:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
