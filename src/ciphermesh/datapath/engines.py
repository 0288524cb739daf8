"""`open_engine`: the engine implementation for a kind and a mode."""

from __future__ import annotations

from ciphermesh.datapath.desired import WIREGUARD_PORT
from ciphermesh.datapath.engine import ENGINE_KINDS, EncryptedMode, Engine, EngineKind
from ciphermesh.datapath.kernel.ipsec.engine import KernelIPsec
from ciphermesh.datapath.kernel.wireguard.engine import KernelWireGuard
from ciphermesh.datapath.userspace.ipsec.node_engine import UserspaceIPsec
from ciphermesh.datapath.userspace.wireguard.node_engine import UserspaceWireGuard
from ciphermesh.wireguard.keys import PrivateKey


def open_engine(
    kind: EngineKind, mode: EncryptedMode, *, mtu: int, private_key: PrivateKey | None = None,
    port: int = WIREGUARD_PORT,
) -> Engine:
    """A started engine of `kind` for `mode`; WireGuard needs the node's `private_key`."""
    if kind not in ENGINE_KINDS:
        raise ValueError(f"encryption engine {kind!r}: choose one of {', '.join(ENGINE_KINDS)}")
    if mode == "ipsec":
        return KernelIPsec(mtu=mtu) if kind == "kernel" else UserspaceIPsec()
    if private_key is None:
        raise ValueError("the WireGuard engine needs the node's private key")
    if kind == "kernel":
        return KernelWireGuard(private_key, port=port, mtu=mtu)
    return UserspaceWireGuard(private_key, port=port, mtu=mtu)
