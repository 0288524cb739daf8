"""`open_engine`: the engine implementation for a kind and a mode (kernel WireGuard is not built yet)."""

from __future__ import annotations

from ciphermesh.datapath.desired import WIREGUARD_PORT
from ciphermesh.datapath.engine import ENGINE_KINDS, EncryptedMode, Engine, EngineKind, EngineNotBuiltError
from ciphermesh.datapath.kernel.ipsec.engine import KernelIPsec
from ciphermesh.datapath.userspace.ipsec.node_engine import UserspaceIPsec
from ciphermesh.datapath.userspace.wireguard.node_engine import UserspaceWireGuard
from ciphermesh.wireguard.keys import PrivateKey


def open_engine(
    kind: EngineKind, mode: EncryptedMode, *, mtu: int, private_key: PrivateKey | None = None,
    port: int = WIREGUARD_PORT,
) -> Engine:
    """A started engine of `kind` for `mode`; WireGuard needs the node's `private_key`."""
    if kind == "kernel":
        if mode == "wireguard":
            raise EngineNotBuiltError("the kernel WireGuard engine is not built yet: use 'userspace'")
        return KernelIPsec(mtu=mtu)
    if kind != "userspace":
        raise ValueError(f"encryption engine {kind!r}: choose one of {', '.join(ENGINE_KINDS)}")
    if mode == "ipsec":
        return UserspaceIPsec()
    if private_key is None:
        raise ValueError("the WireGuard engine needs the node's private key")
    return UserspaceWireGuard(private_key, port=port, mtu=mtu)
