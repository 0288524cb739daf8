"""The kernel's WG_CMD_GET_DEVICE answer, as bytes on the wire, read back and shown as engine status."""

from __future__ import annotations

import secrets
from socket import AF_INET, inet_pton
from typing import Any

from pyroute2.netlink.generic.wireguard import wgmsg

from ciphermesh.datapath.kernel.wireguard.device import NO_PRESHARED_KEY, read_device
from ciphermesh.datapath.kernel.wireguard.status import device_status
from ciphermesh.wireguard.keys import PrivateKey

OURS, PEER = (PrivateKey.generate(secrets.token_bytes) for _ in range(2))


def _allowed(cidr: str) -> dict[str, Any]:
    address, length = cidr.split("/")
    return {"attrs": [["WGALLOWEDIP_A_FAMILY", AF_INET],
                      ["WGALLOWEDIP_A_IPADDR", inet_pton(AF_INET, address)],
                      ["WGALLOWEDIP_A_CIDR_MASK", int(length)]]}


def _message(peer_attrs: list[list[Any]]) -> Any:
    """A reply as the kernel encodes it (private key included, as root's dump has it), decoded again."""
    msg = wgmsg()
    msg["cmd"], msg["version"], msg["header"]["type"] = 0, 1, 30
    msg["attrs"] = [
        ["WGDEVICE_A_LISTEN_PORT", 51871], ["WGDEVICE_A_FWMARK", 0x1E00], ["WGDEVICE_A_IFINDEX", 7],
        ["WGDEVICE_A_IFNAME", "cilium_wg0"], ["WGDEVICE_A_PRIVATE_KEY", OURS.to_base64()],
        ["WGDEVICE_A_PUBLIC_KEY", OURS.public_key().to_base64()],
        ["WGDEVICE_A_PEERS", [{"attrs": peer_attrs}]],
    ]
    msg.encode()
    decoded = wgmsg(bytes(msg.data))
    decoded.decode()
    return decoded


FIRST = _message([
    ["WGPEER_A_PUBLIC_KEY", PEER.public_key().to_base64()], ["WGPEER_A_PRESHARED_KEY", NO_PRESHARED_KEY],
    ["WGPEER_A_ENDPOINT", {"addr": "10.0.0.3", "port": 51871}],
    ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 0],
    ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1_700_000_000, "tv_nsec": 5}],
    ["WGPEER_A_RX_BYTES", 1200], ["WGPEER_A_TX_BYTES", 3400],
    ["WGPEER_A_ALLOWEDIPS", [_allowed("10.0.0.3/32"), _allowed("10.1.3.0/24")]],
    ["WGPEER_A_PROTOCOL_VERSION", 1],
])
# The kernel continues a peer whose allowed IPs did not fit: its public key and the rest of them.
REST = _message([["WGPEER_A_PUBLIC_KEY", PEER.public_key().to_base64()],
                 ["WGPEER_A_ALLOWEDIPS", [_allowed("10.1.4.0/24")]]])


def test_a_dump_split_over_messages_is_one_device_with_its_peers_joined() -> None:
    device = read_device([FIRST, REST])
    assert (device.ifname, device.listen_port, device.fwmark) == ("cilium_wg0", 51871, 0x1E00)
    assert device.public_key == OURS.public_key().to_base64()
    (peer,) = device.peers
    assert peer.public_key == PEER.public_key().to_base64() and peer.endpoint == ("10.0.0.3", 51871)
    assert peer.allowed_ips == {"10.0.0.3/32", "10.1.3.0/24", "10.1.4.0/24"}
    assert (peer.latest_handshake, peer.rx_bytes, peer.tx_bytes, peer.preshared_key) == (
        1_700_000_000, 1200, 3400, False)


def test_status_has_the_userspace_engine_s_shape_and_no_private_key() -> None:
    status = device_status(read_device([FIRST]))
    assert status["engine"] == "kernel" and status["sas"] == []
    assert status["counters"] == {"txBytes": 3400, "rxBytes": 1200}
    assert status["peers"] == [{
        "publicKey": PEER.public_key().to_base64(), "presharedKey": False, "endpoint": "10.0.0.3:51871",
        "allowedIps": ["10.0.0.3/32", "10.1.3.0/24"], "latestHandshake": 1_700_000_000, "rxBytes": 1200,
        "txBytes": 3400, "persistentKeepalive": 0,
    }]
    assert {"interface": "cilium_wg0", "listenPort": 51871, "fwmark": 0x1E00}.items() <= status.items()
    assert OURS.to_base64() not in repr(status)
