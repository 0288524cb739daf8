"""The kernel WireGuard engine's status in the userspace engine's shape (`wg show` as JSON, no keys but
public ones), with the byte counters summed over peers and no SAs."""

from __future__ import annotations

from typing import Any

from ciphermesh.datapath.kernel.wireguard.device import KernelDevice
from ciphermesh.datapath.kernel.wireguard.peers import KernelPeer


def _endpoint(peer: KernelPeer) -> str | None:
    if peer.endpoint is None:
        return None
    host, port = peer.endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_status(peer: KernelPeer) -> dict[str, Any]:
    return {
        "publicKey": peer.public_key,
        "presharedKey": peer.preshared_key,
        "endpoint": _endpoint(peer),
        "allowedIps": sorted(peer.allowed_ips),
        "latestHandshake": peer.latest_handshake,
        "rxBytes": peer.rx_bytes,
        "txBytes": peer.tx_bytes,
        "persistentKeepalive": peer.persistent_keepalive,
    }


def device_status(device: KernelDevice) -> dict[str, Any]:
    """What the userspace engine's status holds, from what the kernel reports."""
    peers = [peer_status(p) for p in device.peers]
    return {
        "engine": "kernel",
        "interface": device.ifname,
        "publicKey": device.public_key,
        "listenPort": device.listen_port,
        "fwmark": device.fwmark,
        "peers": peers,
        "counters": {"txBytes": sum(p.tx_bytes for p in device.peers),
                     "rxBytes": sum(p.rx_bytes for p in device.peers)},
        # WireGuard holds sessions, not ESP SAs: there is nothing for `encryption sa list`.
        "sas": [],
    }
