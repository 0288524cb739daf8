"""The userspace WireGuard engine: drives the sans-IO device between a TUN device and a UDP socket.

One thread, one epoll loop. Each wakeup drains up to `batch` packets from whichever side is ready,
so the per-wakeup costs (epoll, clock, timers, flushing) are shared by many packets; datagrams queued
for one peer leave in a single GSO send.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from ciphermesh.datapath.userspace.tcp_coalesce import VNET_HDR_LEN, coalesce
from ciphermesh.datapath.userspace.tun import TunDevice
from ciphermesh.datapath.userspace.udp_batch import BatchSender
from ciphermesh.wireguard.device import Device
from ciphermesh.wireguard.events import EventKind

log = logging.getLogger(__name__)
DEFAULT_BATCH = 64
MAX_DATAGRAM = 65535
_IDLE_WAIT = 1.0
_QUIET_EVENTS = frozenset({EventKind.ENDPOINT_CHANGED})


class EngineDrop(StrEnum):
    TUN_READ_ERROR = "tunReadError"
    TUN_OFFLOADED_PACKET = "tunOffloadedPacket"
    TUN_WRITE_ERROR = "tunWriteError"
    UDP_RECEIVE_ERROR = "udpReceiveError"
    UDP_SEND_ERROR = "udpSendError"


class WireGuardEngine:
    """Moves packets: TUN -> device.send -> UDP, and UDP -> device.receive -> TUN, plus timers."""

    def __init__(
        self,
        device: Device,
        tun: TunDevice,
        sock4: socket.socket,
        sock6: socket.socket | None = None,
        *,
        batch: int = DEFAULT_BATCH,
        gso: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """With a TUN device opened with vnet_hdr, received TCP runs are written as one GSO packet."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.device = device
        self.tun = tun
        self._sockets = {s.fileno(): s for s in (sock4, sock6) if s is not None}
        self._batch = batch
        self._clock = clock
        self._sender = BatchSender(sock4, sock6, gso=gso)
        self._drops: dict[EngineDrop, int] = dict.fromkeys(EngineDrop, 0)
        self._handlers: dict[int, Callable[[], bool]] = {}
        self.listen_port: int = sock4.getsockname()[1]

    def add_handler(self, fd: int, handler: Callable[[], bool]) -> None:
        """Call `handler` when `fd` is readable; the loop ends when a handler returns False."""
        self._handlers[fd] = handler

    def engine_drops(self) -> dict[str, int]:
        drops = dict(self._drops)
        drops[EngineDrop.UDP_SEND_ERROR] += self._sender.errors
        return {str(k): v for k, v in drops.items() if v}

    def run(self) -> None:
        """Until a handler returns False."""
        poller = select.epoll()
        try:
            for fd in (self.tun.fileno(), *self._sockets, *self._handlers):
                poller.register(fd, select.EPOLLIN)
            self._loop(poller)
        finally:
            poller.close()

    def _loop(self, poller: select.epoll) -> None:
        device = self.device
        clock = self._clock
        tun_fd = self.tun.fileno()
        sockets = self._sockets
        while True:
            deadline = device.next_deadline()
            timeout = _IDLE_WAIT if deadline is None else min(_IDLE_WAIT, max(0.0, deadline - clock()))
            try:
                ready = poller.poll(timeout)
            except InterruptedError:
                continue
            now = clock()
            for fd, _mask in ready:
                if fd in sockets:
                    self._from_network(sockets[fd], now)
                elif fd == tun_fd:
                    self._from_tun(now)
                elif not self._handlers[fd]():
                    return
            if deadline is not None and now >= deadline:
                device.tick(now)
            if device.outgoing:
                self._sender.send(device.take_outgoing())
            if device.events:
                self._log_events()

    def _from_tun(self, now: float) -> None:
        fd = self.tun.fileno()
        read = os.read
        vnet = self.tun.vnet_hdr
        packets = []
        for _ in range(self._batch):
            try:
                packet = read(fd, MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError:
                self._drops[EngineDrop.TUN_READ_ERROR] += 1
                break
            if vnet:
                # Without TUNSETOFFLOAD the kernel hands over complete packets: flags and GSO type are 0.
                if packet[0] or packet[1]:
                    self._drops[EngineDrop.TUN_OFFLOADED_PACKET] += 1
                    continue
                packet = packet[VNET_HDR_LEN:]
            packets.append(packet)
        device = self.device
        device.send_many(packets, now)
        if device.outgoing:
            self._sender.send(device.take_outgoing())

    def _from_network(self, sock: socket.socket, now: float) -> None:
        recvfrom = sock.recvfrom
        flags = socket.MSG_DONTWAIT
        datagrams = []
        for _ in range(self._batch):
            try:
                datagrams.append(recvfrom(MAX_DATAGRAM, flags))
            except BlockingIOError:
                break
            except OSError:
                self._drops[EngineDrop.UDP_RECEIVE_ERROR] += 1
                break
        packets = self.device.receive_many(datagrams, now)
        if packets:
            self._deliver(packets)

    def _deliver(self, packets: list[bytes]) -> None:
        fd = self.tun.fileno()
        errors = 0
        if self.tun.vnet_hdr:
            writev = os.writev
            for frame in coalesce(packets):
                try:
                    writev(fd, frame)
                except OSError:
                    errors += 1
        else:
            write = os.write
            for packet in packets:
                try:
                    write(fd, packet)
                except OSError:
                    errors += 1
        if errors:
            self._drops[EngineDrop.TUN_WRITE_ERROR] += errors

    def _log_events(self) -> None:
        for event in self.device.take_events():
            level = logging.DEBUG if event.kind in _QUIET_EVENTS else logging.INFO
            if event.kind is EventKind.INTERNAL_ERROR:
                level = logging.ERROR
            log.log(level, "%s peer=%s %s", event.kind.value, event.peer or "-", event.detail)

    def status(self, ifname: str, *, fwmark: int = 0) -> dict[str, Any]:
        """What `wg show` prints, as JSON; keys are never included."""
        peers = []
        for p in self.device.peer_status():
            endpoint = None
            if p.endpoint is not None:
                host, port = p.endpoint[0], p.endpoint[1]
                endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            peers.append(
                {
                    "publicKey": p.public_key,
                    "presharedKey": p.has_preshared_key,
                    "endpoint": endpoint,
                    "allowedIps": list(p.allowed_ips),
                    "latestHandshake": int(p.latest_handshake) if p.latest_handshake else 0,
                    "rxBytes": p.rx_bytes,
                    "txBytes": p.tx_bytes,
                    "persistentKeepalive": p.persistent_keepalive,
                }
            )
        return {
            "interface": ifname,
            "publicKey": self.device.public_key.to_base64(),
            "listenPort": self.listen_port,
            "fwmark": fwmark,
            "peers": peers,
            "drops": self.device.drops.as_dict(),
            "engineDrops": self.engine_drops(),
            "gso": self._sender.gso,
        }
