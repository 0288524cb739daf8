"""The kernel's answer to WG_CMD_GET_DEVICE (pyroute2 `WireGuard.info`) as plain data, the private key
left behind: a dump with many peers spans several messages, each carrying the device and some peers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from ciphermesh.datapath.kernel.wireguard.peers import KernelPeer, prefix
from ciphermesh.wireguard.keys import encode_key

NO_PRESHARED_KEY = encode_key(bytes(32))


@dataclass(frozen=True)
class KernelDevice:
    """cilium_wg0 as the kernel holds it."""

    ifname: str
    public_key: str | None
    listen_port: int
    fwmark: int
    peers: tuple[KernelPeer, ...]


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def read_peer(peer: Any) -> KernelPeer:
    """One WGDEVICE_A_PEERS entry."""
    endpoint = peer.get_attr("WGPEER_A_ENDPOINT")
    handshake = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
    return KernelPeer(
        public_key=_text(peer.get_attr("WGPEER_A_PUBLIC_KEY")) or "",
        endpoint=(endpoint["addr"], endpoint["port"]) if endpoint is not None else None,
        allowed_ips=frozenset(prefix(ip["addr"]) for ip in peer.get_attr("WGPEER_A_ALLOWEDIPS") or ()),
        latest_handshake=handshake["tv_sec"] if handshake is not None else 0,
        rx_bytes=peer.get_attr("WGPEER_A_RX_BYTES") or 0,
        tx_bytes=peer.get_attr("WGPEER_A_TX_BYTES") or 0,
        persistent_keepalive=peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0,
        preshared_key=_text(peer.get_attr("WGPEER_A_PRESHARED_KEY")) not in (None, NO_PRESHARED_KEY),
    )


def read_device(messages: Iterable[Any]) -> KernelDevice:
    """The device from every message of one dump; a peer split across messages is joined again."""
    first: Any = None
    peers: dict[str, KernelPeer] = {}
    for msg in messages:
        first = first if first is not None else msg
        for raw in msg.get_attr("WGDEVICE_A_PEERS") or ():
            peer = read_peer(raw)
            # The kernel continues a peer whose allowed IPs did not fit in the next message.
            if (earlier := peers.get(peer.public_key)) is not None:
                peer = replace(earlier, allowed_ips=earlier.allowed_ips | peer.allowed_ips)
            peers[peer.public_key] = peer
    if first is None:
        raise ValueError("the kernel answered WG_CMD_GET_DEVICE with no message")
    return KernelDevice(
        ifname=first.get_attr("WGDEVICE_A_IFNAME") or "",
        public_key=_text(first.get_attr("WGDEVICE_A_PUBLIC_KEY")),
        listen_port=first.get_attr("WGDEVICE_A_LISTEN_PORT") or 0,
        fwmark=first.get_attr("WGDEVICE_A_FWMARK") or 0,
        peers=tuple(peers.values()),
    )
