"""UDP sockets for tunnel traffic: one per address family on one port, large buffers, batched GSO sends."""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections.abc import Sequence
from typing import Any

SO_SNDBUFFORCE = 32  # <asm-generic/socket.h>; Python's socket module does not export them
SO_RCVBUFFORCE = 33
UDP_SEGMENT = 103  # <linux/udp.h>
DEFAULT_SOCKET_BUFFER = 8 << 20
# The kernel's UDP_MAX_SEGMENTS, and the largest UDP payload one GSO send may carry.
MAX_SEGMENTS = 64
MAX_GSO_BYTES = 65000
_SEGMENT = struct.Struct("=H")
_NO_GSO = (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP)


def _open(family: int, port: int, fwmark: int, buffer_bytes: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            # The *FORCE options pass net.core.[rw]mem_max; without CAP_NET_ADMIN use the capped ones.
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer_bytes)
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, buffer_bytes)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
        if fwmark:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, fwmark)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    except OSError:
        sock.close()
        raise
    return sock


def open_udp_sockets(
    port: int | None, *, fwmark: int = 0, buffer_bytes: int = DEFAULT_SOCKET_BUFFER
) -> tuple[socket.socket, socket.socket | None]:
    """An IPv4 socket on `port` (any port if None or 0) and an IPv6 one on the same port, if IPv6 works.

    Sockets block on send, so a full send buffer slows the sender rather than dropping.
    """
    sock4 = _open(socket.AF_INET, port or 0, fwmark, buffer_bytes)
    bound_port = sock4.getsockname()[1]
    try:
        sock6: socket.socket | None = _open(socket.AF_INET6, bound_port, fwmark, buffer_bytes)
    except OSError as exc:
        if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
            sock4.close()
            raise
        sock6 = None
    return sock4, sock6


class BatchSender:
    """Sends datagrams, coalescing runs to one destination and size into one GSO send."""

    def __init__(self, sock4: socket.socket, sock6: socket.socket | None, *, gso: bool = True) -> None:
        self._sock4 = sock4
        self._sock6 = sock6
        self.gso = gso
        self.errors = 0

    def close(self) -> None:
        for sock in (self._sock4, self._sock6):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def send(self, datagrams: Sequence[tuple[bytes, tuple[Any, ...]]]) -> None:
        count = len(datagrams)
        i = 0
        while i < count:
            first, endpoint = datagrams[i]
            size = len(first)
            j = i + 1
            if self.gso:
                limit = min(count, i + min(MAX_SEGMENTS, MAX_GSO_BYTES // max(size, 1)))
                while j < limit and datagrams[j][1] == endpoint and len(datagrams[j][0]) == size:
                    j += 1
                # GSO lets the last segment be shorter than the others.
                if j < limit and datagrams[j][1] == endpoint and len(datagrams[j][0]) < size:
                    j += 1
            sock = self._sock4 if len(endpoint) == 2 else self._sock6
            if sock is None:
                self.errors += j - i
                i = j
                continue
            try:
                if j - i == 1:
                    sock.sendto(first, endpoint)
                else:
                    segment = [(socket.SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(size))]
                    sock.sendmsg([d for d, _ in datagrams[i:j]], segment, 0, endpoint)
            except OSError as exc:
                if j - i > 1 and exc.errno in _NO_GSO:
                    self.gso = False  # this path cannot segment: send one by one from now on
                    continue
                self.errors += j - i
            i = j
