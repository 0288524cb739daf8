"""`ciphermesh wireguard up`: one userspace WireGuard interface in the foreground until SIGTERM.

Builds the device from the configuration file, opens the TUN device and the UDP sockets, serves
status on the control socket, re-reads the file on SIGHUP (peers that stay keep their sessions, as
with `wg syncconf`), and on SIGTERM or SIGINT closes everything: the TUN link disappears with its
last descriptor and the control socket is removed.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ciphermesh.datapath.userspace.tun import TunDevice
from ciphermesh.datapath.userspace.tun_link import configure_link
from ciphermesh.datapath.userspace.udp_batch import open_udp_sockets
from ciphermesh.datapath.userspace.wireguard import wgconfig
from ciphermesh.datapath.userspace.wireguard.control import ControlServer
from ciphermesh.datapath.userspace.wireguard.engine import DEFAULT_BATCH, WireGuardEngine
from ciphermesh.rtnl.errors import DatapathError
from ciphermesh.wireguard.constants import DEFAULT_TIMING, Timing
from ciphermesh.wireguard.device import DEFAULT_HANDSHAKE_LOAD_THRESHOLD, DEFAULT_MTU, Device

log = logging.getLogger(__name__)
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True, slots=True)
class RunOptions:
    ifname: str
    config_path: Path
    socket_path: Path
    timing: Timing = DEFAULT_TIMING
    batch: int = DEFAULT_BATCH
    gso: bool = True
    offload: bool = True
    handshake_load_threshold: int = DEFAULT_HANDSHAKE_LOAD_THRESHOLD


class _Signals:
    """Signals noted by handlers and delivered to the loop through a wakeup socket."""

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)
        self.stop = False
        self.reload = False
        self._previous = {s: signal.getsignal(s) for s in (*_STOP_SIGNALS, signal.SIGHUP)}
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for s in _STOP_SIGNALS:
            signal.signal(s, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, _signum: int, _frame: FrameType | None) -> None:
        self.stop = True

    def _on_reload(self, _signum: int, _frame: FrameType | None) -> None:
        self.reload = True

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self.reader.recv(4096):
                pass

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self.reader.close()
        self._writer.close()


def build_device(config: wgconfig.WgConfig, options: RunOptions) -> Device:
    device = Device(
        config.private_key,
        randbytes=secrets.token_bytes,
        wallclock=time.time,
        timing=options.timing,
        mtu=config.mtu or DEFAULT_MTU,
        handshake_load_threshold=options.handshake_load_threshold,
    )
    device.sync_peers([wgconfig.peer_config(p) for p in config.peers])
    return device


def serve(options: RunOptions) -> None:
    """Run until SIGTERM/SIGINT; raises WgConfigError, DatapathError or OSError if it cannot start."""
    config = wgconfig.load(options.config_path)
    device = build_device(config, options)
    try:
        tun = TunDevice(options.ifname, vnet_hdr=options.offload)
    except OSError as exc:
        raise DatapathError(f"cannot create TUN device {options.ifname}: {exc.strerror or exc}") from exc
    signals: _Signals | None = None
    control: ControlServer | None = None
    sock4 = sock6 = None
    try:
        configure_link(options.ifname, mtu=config.mtu or DEFAULT_MTU, addresses=config.addresses)
        sock4, sock6 = open_udp_sockets(config.listen_port, fwmark=config.fwmark)
        engine = WireGuardEngine(device, tun, sock4, sock6, batch=options.batch, gso=options.gso)
        fwmark = config.fwmark
        control = ControlServer(options.socket_path, lambda: engine.status(options.ifname, fwmark=fwmark))
        signals = _Signals()
        engine.add_handler(control.fileno(), _answer(control))
        engine.add_handler(signals.reader.fileno(), _on_signal(signals, options, device))
        log.info(
            "%s up: public key %s, port %d, %d peer(s), control socket %s",
            options.ifname,
            device.public_key.to_base64(),
            engine.listen_port,
            len(device.peers),
            options.socket_path,
        )
        engine.run()
        log.info("%s down", options.ifname)
    finally:
        if signals is not None:
            signals.close()
        if control is not None:
            control.close()
        for sock in (sock4, sock6):
            if sock is not None:
                sock.close()
        tun.close()


def _answer(control: ControlServer) -> Callable[[], bool]:
    def handle() -> bool:
        control.handle()
        return True

    return handle


def _on_signal(signals: _Signals, options: RunOptions, device: Device) -> Callable[[], bool]:
    def handle() -> bool:
        signals.drain()
        if signals.stop:
            return False
        if signals.reload:
            signals.reload = False
            try:
                config = wgconfig.load(options.config_path)
                device.sync_peers([wgconfig.peer_config(p) for p in config.peers])
            except ValueError as exc:
                log.error("reload of %s refused, keeping the running peers: %s", options.config_path, exc)
            else:
                if config.private_key.public_key() != device.public_key:
                    log.warning("reload: a new PrivateKey needs a restart; peers were updated")
                log.info("reloaded %s: %d peer(s)", options.config_path, len(device.peers))
        return True

    return handle
