"""A node's cilium_wg0 inside the agent: the userspace WireGuard engine in its own thread.

The device is touched only by the engine thread: `sync_peers`, `status` and `stop` hand their work
to it through a wakeup socket and wait for the answer.
"""

from __future__ import annotations

import contextlib
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from ciphermesh.datapath.userspace.tun import TunDevice
from ciphermesh.datapath.userspace.tun_link import configure_link
from ciphermesh.datapath.userspace.udp_batch import open_udp_sockets
from ciphermesh.datapath.userspace.wireguard.engine import WireGuardEngine
from ciphermesh.rtnl.errors import DatapathError
from ciphermesh.rtnl.ownership import WIREGUARD_MARK
from ciphermesh.wireguard.device import Device
from ciphermesh.wireguard.keys import PrivateKey
from ciphermesh.wireguard.peer import PeerConfig

WG_IFNAME = "cilium_wg0"
CALL_TIMEOUT = 5.0
T = TypeVar("T")


class WireGuardNode:
    """cilium_wg0 with its UDP port; `start` opens both, `stop` closes them (the link goes with the TUN)."""

    def __init__(self, private_key: PrivateKey, *, port: int, mtu: int, ifname: str = WG_IFNAME) -> None:
        self.ifname = ifname
        self.public_key = private_key.public_key().to_base64()
        self._device = Device(private_key, randbytes=secrets.token_bytes, wallclock=time.time, mtu=mtu)
        self._port = port
        self._mtu = mtu
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._engine: WireGuardEngine | None = None
        self._closers: list[Callable[[], None]] = []

    def start(self) -> None:
        """Create the TUN device and the sockets, bring the link up, start the engine thread."""
        try:
            tun = TunDevice(self.ifname, vnet_hdr=True)
        except OSError as exc:
            raise DatapathError(f"cannot create TUN device {self.ifname}: {exc.strerror or exc}") from exc
        self._closers.append(tun.close)
        try:
            sock4, sock6 = open_udp_sockets(self._port, fwmark=WIREGUARD_MARK)
        except OSError as exc:
            raise DatapathError(f"cannot listen on UDP {self._port}: {exc.strerror or exc}") from exc
        self._closers += [s.close for s in (sock4, sock6) if s is not None]
        configure_link(self.ifname, mtu=self._mtu, addresses=())
        engine = WireGuardEngine(self._device, tun, sock4, sock6)
        self._wake_reader.setblocking(False)
        engine.add_handler(self._wake_reader.fileno(), self._serve_calls)
        self._engine = engine
        self._thread = threading.Thread(target=engine.run, name="wireguard-engine", daemon=True)
        self._thread.start()

    def sync_peers(self, peers: Sequence[PeerConfig]) -> None:
        """Make the peers exactly `peers`; sessions of peers that stay survive (ValueError if refused)."""
        configs = list(peers)
        self._call(lambda: self._device.sync_peers(configs))

    def status(self) -> dict[str, Any] | None:
        """`wg show` as JSON (no private key), or None if the engine is not running."""
        engine = self._engine
        if engine is None:
            return None
        try:
            return self._call(lambda: engine.status(self.ifname, fwmark=WIREGUARD_MARK))
        except DatapathError:
            return None

    def stop(self) -> None:
        """End the engine thread, then close the TUN device (removing the link) and the sockets."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")
        if self._thread is not None:
            self._thread.join(timeout=CALL_TIMEOUT)
        for close in self._closers:
            close()
        self._wake_reader.close()
        self._wake_writer.close()

    def _call(self, work: Callable[[], T]) -> T:
        if self._thread is None or not self._thread.is_alive():
            raise DatapathError(f"the {self.ifname} engine is not running")
        future: Future[T] = Future()
        self._calls.put((work, future))
        try:
            self._wake_writer.send(b"\0")
        except OSError as exc:
            raise DatapathError(f"the {self.ifname} engine is stopping: {exc.strerror or exc}") from None
        try:
            return future.result(timeout=CALL_TIMEOUT)
        except TimeoutError:
            raise DatapathError(f"the {self.ifname} engine did not answer in {CALL_TIMEOUT:g} s") from None

    def _serve_calls(self) -> bool:
        """Run queued calls in the engine thread; False ends the engine's loop."""
        with contextlib.suppress(BlockingIOError):
            while self._wake_reader.recv(4096):
                pass
        while True:
            try:
                work, future = self._calls.get_nowait()
            except queue.Empty:
                break
            try:
                future.set_result(work())
            except Exception as exc:  # handed to the caller, who reports it; the engine keeps running
                future.set_exception(exc)
        return not self._stopping
