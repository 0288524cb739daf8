"""A TUN device opened through /dev/net/tun: IP packets in and out of the kernel, no link header."""

from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16


class TunDevice:
    """One queue of a TUN device; the device goes away with the last open queue unless persistent."""

    def __init__(
        self, name: str, *, multi_queue: bool = False, blocking: bool = False, vnet_hdr: bool = False
    ) -> None:
        """`vnet_hdr`: every packet read or written starts with a 10-byte virtio_net_hdr (for GSO writes)."""
        if not name or len(name.encode()) >= IFNAMSIZ:
            raise ValueError(f"TUN device name {name!r} must be 1 to {IFNAMSIZ - 1} bytes")
        flags = IFF_TUN | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0)
        if vnet_hdr:
            flags |= IFF_VNET_HDR
        self.vnet_hdr = vnet_hdr
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | (0 if blocking else os.O_NONBLOCK))
        try:
            ifr = struct.pack("16sH22x", name.encode(), flags)
            answer = fcntl.ioctl(self.fd, TUNSETIFF, ifr)
        except OSError:
            os.close(self.fd)
            raise
        self.name = answer[:IFNAMSIZ].rstrip(b"\0").decode()

    def set_persistent(self, persistent: bool) -> None:
        fcntl.ioctl(self.fd, TUNSETPERSIST, int(persistent))

    def read(self, size: int = 65535) -> bytes:
        """One packet; raises BlockingIOError when none is queued on a non-blocking device."""
        return os.read(self.fd, size)

    def write(self, packet: bytes) -> int:
        return os.write(self.fd, packet)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
