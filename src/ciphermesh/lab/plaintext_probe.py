"""Put a crafted IPv4 packet on a node's device as if routing had sent it: the strict-mode guard's adversary.

The socket is bound to the device (SO_BINDTODEVICE), so the kernel sends even where the routes say
otherwise: with no usable route through the device it takes the destination as on-link, and the packet
goes out only if the device has a neighbour entry for it. Netfilter's postrouting hook still sees it.
"""

from __future__ import annotations

import errno
import socket
from ipaddress import IPv4Address

from ciphermesh.inet import IPV4_HEADER, icmp_echo
from ciphermesh.lab import netns


class PlaintextProbeError(RuntimeError):
    """The packet could not be handed to the kernel (other than a netfilter drop)."""


def echo_request(
    src: IPv4Address, dst: IPv4Address, payload: bytes, *, ident: int = 0x434D, sequence: int = 1
) -> bytes:
    """An IPv4 ICMP echo request datagram, both checksums filled in; `ident` is also the IP ID."""
    return icmp_echo(src, dst, payload, ident=ident, seq=sequence, ip_id=ident)


def send_ipv4(netns_name: str, datagram: bytes, *, device: str) -> None:
    """Send a whole IPv4 datagram out `device` from inside the namespace; a netfilter drop counts as sent."""
    if len(datagram) < IPV4_HEADER.size or datagram[0] >> 4 != 4:
        raise ValueError("not an IPv4 datagram: it needs a version-4 header of at least 20 bytes")
    dst = str(IPv4Address(datagram[16:20]))
    place = f"{device} in {netns_name}"
    try:
        # The socket is the namespace's because it is created there; IPPROTO_RAW implies IP_HDRINCL.
        with netns.entered(netns_name):
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except OSError as exc:
        raise PlaintextProbeError(f"cannot open a raw socket in {netns_name}: {exc.strerror or exc}") from exc
    with sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        except OSError as exc:
            raise PlaintextProbeError(f"cannot bind to device {place}: {exc.strerror or exc}") from exc
        try:
            sock.sendto(datagram, (dst, 0))
        except OSError as exc:
            if exc.errno == errno.EPERM:
                return  # what a netfilter drop at output or postrouting looks like to the sender
            raise PlaintextProbeError(f"cannot send to {dst} out {place}: {exc.strerror or exc}") from exc


def inject_plaintext(
    netns_name: str, *, src: IPv4Address, dst: IPv4Address, device: str, payload: bytes
) -> None:
    """One unencrypted ICMP echo request from `src` (any address) to `dst`, forced out `device`."""
    send_ipv4(netns_name, echo_request(src, dst, payload), device=device)
