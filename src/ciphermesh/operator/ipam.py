"""Cluster-pool IPAM: `clusterPoolIPv4PodCIDRList` split into `/clusterPoolIPv4MaskSize` blocks,
handed out first-free in list order, as Cilium's cluster-pool allocator does. IPv4 only for now; pure.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network

from ciphermesh.config import MASK_KEY, POOL_KEY

# A /31 or /32 block has no pod address left once network and broadcast are reserved.
MAX_MASK_SIZE = 30


class IPAMConfigError(ValueError):
    """The pool configuration is not usable; the message names the Helm value at fault."""


def _network(text: object) -> IPv4Network:
    if not isinstance(text, str):
        raise IPAMConfigError(f"{POOL_KEY}: {text!r} is not a CIDR")
    try:
        network = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        if "host bits" in str(exc):
            loose = ipaddress.ip_network(text.strip(), strict=False)
            raise IPAMConfigError(f"{POOL_KEY}: {text} has host bits set (did you mean {loose}?)") from None
        raise IPAMConfigError(f"{POOL_KEY}: {text!r} is not a CIDR") from None
    if not isinstance(network, IPv4Network):
        raise IPAMConfigError(f"{POOL_KEY}: {text} is IPv6; only IPv4 pools are supported for now")
    return network


@dataclass(frozen=True)
class ClusterPool:
    """The pool entries, in order, and the size of the block each node gets."""

    cidrs: tuple[IPv4Network, ...]
    mask_size: int

    @classmethod
    def parse(cls, cidr_list: Sequence[str], mask_size: int) -> ClusterPool:
        """Validate the two Helm values; `IPAMConfigError` names the one at fault."""
        if isinstance(cidr_list, str) or not isinstance(cidr_list, Sequence):
            raise IPAMConfigError(f"{POOL_KEY} must be a list of CIDRs, not {cidr_list!r}")
        if not cidr_list:
            raise IPAMConfigError(f"{POOL_KEY} is empty: the operator has no pod CIDRs to hand out")
        if not isinstance(mask_size, int) or isinstance(mask_size, bool):
            raise IPAMConfigError(f"{MASK_KEY} {mask_size!r} is not an integer")
        cidrs = tuple(_network(c) for c in cidr_list)
        for i, a in enumerate(cidrs):
            for b in cidrs[i + 1 :]:
                if a.overlaps(b):
                    raise IPAMConfigError(f"{POOL_KEY}: {a} and {b} overlap")
            if mask_size < a.prefixlen:
                raise IPAMConfigError(
                    f"{MASK_KEY} {mask_size} is smaller than the prefix of pool {a} (/{a.prefixlen})"
                )
        if mask_size > MAX_MASK_SIZE:
            raise IPAMConfigError(
                f"{MASK_KEY} {mask_size} leaves no pod addresses in a block (at most {MAX_MASK_SIZE})"
            )
        return cls(cidrs, mask_size)

    @property
    def capacity(self) -> int:
        """How many node blocks the whole pool holds."""
        return sum(1 << (self.mask_size - c.prefixlen) for c in self.cidrs)

    def describe(self) -> str:
        return ", ".join(str(c) for c in self.cidrs)

    def entry_of(self, block: IPv4Network) -> IPv4Network | None:
        """The pool entry of which `block` is one of the blocks, or None."""
        if block.prefixlen != self.mask_size:
            return None
        return next((c for c in self.cidrs if block.subnet_of(c)), None)

    def overlaps(self, network: IPv4Network) -> bool:
        return any(c.overlaps(network) for c in self.cidrs)

    def first_free(self, taken: Iterable[IPv4Network]) -> tuple[IPv4Network, IPv4Network] | None:
        """The first block, in list order, that overlaps nothing in `taken`, with its pool entry."""
        taken = list(taken)
        step_bits = 32 - self.mask_size
        for entry in self.cidrs:
            base = int(entry.network_address)
            count = 1 << (self.mask_size - entry.prefixlen)
            used = sorted(
                (
                    max(0, (int(t.network_address) - base) >> step_bits),
                    min(count - 1, (int(t.broadcast_address) - base) >> step_bits),
                )
                for t in taken
                if t.overlaps(entry)
            )
            candidate = 0
            for first, last in used:
                if first > candidate:
                    break
                candidate = max(candidate, last + 1)
            if candidate < count:
                block = IPv4Network((base + (candidate << step_bits), self.mask_size))
                return block, entry
        return None

    def exhausted_message(self, node: str) -> str:
        return f"IPAM: pool {self.describe()} exhausted: no /{self.mask_size} left for {node}"
