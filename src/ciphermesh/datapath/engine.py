"""The engine face: what every encryption engine does for a node, whichever kind it is."""

from __future__ import annotations

from typing import Any, Literal, Protocol, get_args

from ciphermesh.datapath.desired import DesiredDatapath

# Where the encryption runs: in this process behind a TUN device, or in the kernel (issue 13).
EngineKind = Literal["userspace", "kernel"]
ENGINE_KINDS: tuple[EngineKind, ...] = get_args(EngineKind)
EncryptedMode = Literal["ipsec", "wireguard"]


class Engine(Protocol):
    """One node's encryption engine, started by `open_engine` and gone after `close`."""

    @property
    def kind(self) -> EngineKind:
        """Which implementation this is, as `encryption.engine` reports it."""
        ...

    @property
    def device(self) -> str | None:
        """The device that traffic to encrypted peers is routed into; None where the engine steers it
        itself (the kernel's XFRM): the main table then holds only the fail-closed routes."""
        ...

    def apply(self, desired: DesiredDatapath) -> None:
        """Hold exactly `desired`'s peers and keys: idempotent, and convergent from any earlier state."""
        ...

    def status(self, *, reveal: bool = False) -> dict[str, Any] | None:
        """None if not running, else a JSON-friendly dict with at least `engine` (the kind), `counters`
        (`txBytes`, `rxBytes`: inner bytes to and from peers), `peers` and `sas` (held SAs: `direction`,
        `src`, `dst`, `spi`, `key`, the key's hex only with `reveal`)."""
        ...

    def close(self) -> None:
        """Stop the engine. A userspace engine removes its device, so traffic to its peers meets the
        fail-closed routes; a kernel engine leaves its SAs or cilium_wg0 encrypting, as Cilium's agent
        does."""
        ...
