"""The kernel WireGuard engine: cilium_wg0 as a `wireguard` link, its peers kept at the desired ones.

The kernel encrypts, so cilium_wg0 and its peers outlive the agent (as Cilium's do); a restarted agent
adopts the link: the same private key and port change nothing, and a reconcile touches only what differs.
"""

from __future__ import annotations

import threading
from typing import Any

from pyroute2 import IPRoute, WireGuard
from pyroute2.netlink.exceptions import NetlinkError

from ciphermesh.datapath.desired import DesiredDatapath
from ciphermesh.datapath.engine import EngineKind
from ciphermesh.datapath.kernel.wireguard.device import KernelDevice, read_device
from ciphermesh.datapath.kernel.wireguard.link import ensure_wireguard_link
from ciphermesh.datapath.kernel.wireguard.peers import plan_peers
from ciphermesh.datapath.kernel.wireguard.status import device_status
from ciphermesh.rtnl import ensure_link_up, netlink_op
from ciphermesh.rtnl.changes import Changes
from ciphermesh.rtnl.errors import DatapathError
from ciphermesh.rtnl.ownership import WIREGUARD_MARK
from ciphermesh.wireguard.keys import PrivateKey

WG_IFNAME = "cilium_wg0"


def _peer_what(request: dict[str, Any]) -> str:
    """A request as an error names it: the peer's public key and what was asked, never a key of ours."""
    action = "remove" if request.get("remove") else "set"
    return f"{action} WireGuard peer {request['public_key']}"


class KernelWireGuard:
    """Keeps cilium_wg0's peers at what `apply` was last given; opened in the node's namespace."""

    def __init__(self, private_key: PrivateKey, *, port: int, mtu: int, ifname: str = WG_IFNAME) -> None:
        self._private_key = private_key
        self._port = port
        self._mtu = mtu
        self._ifname = ifname
        self._ipr = IPRoute()
        self._wg = WireGuard()
        # The agent asks for status from its status-socket thread while its loop applies: one netlink
        # conversation at a time on these sockets.
        self._lock = threading.Lock()
        try:
            self._ensure_device()
        except BaseException:
            self.close()
            raise

    @property
    def kind(self) -> EngineKind:
        return "kernel"

    @property
    def device(self) -> str:
        return self._ifname

    def _ensure_device(self) -> None:
        """The link, configured as Cilium's: key, port, mark, MTU, up; what matches already is kept."""
        link = ensure_wireguard_link(self._ipr, self._ifname)
        with netlink_op(f"configure {self._ifname} (private key, listen port {self._port}, fwmark)"):
            self._wg.set(self._ifname, private_key=self._private_key.to_base64(), listen_port=self._port,
                         fwmark=WIREGUARD_MARK)
        ensure_link_up(self._ipr, link, self._mtu, Changes())

    def _read(self) -> KernelDevice:
        with netlink_op(f"read {self._ifname}"):
            return read_device(self._wg.info(self._ifname))

    def apply(self, desired: DesiredDatapath) -> None:
        with self._lock:
            if not self._ipr.link_lookup(ifname=self._ifname):
                self._ensure_device()  # deleted by hand: back as it was, then the peers
            current = self._read()
            for request in plan_peers(current.peers, desired.wireguard_peers):
                with netlink_op(_peer_what(request)):
                    self._wg.set(self._ifname, peer=request)

    def status(self, *, reveal: bool = False) -> dict[str, Any] | None:
        """The kernel's view of cilium_wg0; None if the link is gone. There is no key to reveal."""
        try:
            with self._lock:
                device = self._read()
        except (DatapathError, NetlinkError):
            return None
        return device_status(device)

    def close(self) -> None:
        """Close the sockets only: the kernel goes on encrypting through cilium_wg0 (Cilium leaves it too)."""
        with self._lock:
            self._wg.close()
            self._ipr.close()
