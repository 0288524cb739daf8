"""Longest-prefix lookup of integer IP addresses: one dict per prefix length, keyed by the masked address."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network
from typing import Generic, TypeVar

T = TypeVar("T")


class PrefixMap(Generic[T]):
    """Immutable map from prefixes of one IP version to values; `lookup` takes the address as an int."""

    __slots__ = ("_levels", "version")

    def __init__(self, version: int, items: Iterable[tuple[IPv4Network | IPv6Network, T]]) -> None:
        if version not in (4, 6):
            raise ValueError(f"IP version must be 4 or 6, got {version}")
        bits = 32 if version == 4 else 128
        by_length: dict[int, dict[int, T]] = {}
        for network, value in items:
            if network.version != version:
                raise ValueError(f"{network} is not an IPv{version} prefix")
            by_length.setdefault(network.prefixlen, {})[int(network.network_address)] = value
        self.version = version
        # Longest prefixes first, so the first hit is the longest match.
        self._levels: tuple[tuple[int, dict[int, T]], ...] = tuple(
            (((1 << bits) - 1) ^ ((1 << (bits - length)) - 1), table)
            for length, table in sorted(by_length.items(), reverse=True)
        )

    def lookup(self, address: int) -> T | None:
        """The value of the longest prefix holding `address`, or None."""
        for mask, table in self._levels:
            value = table.get(address & mask)
            if value is not None:
                return value
        return None

    def __len__(self) -> int:
        return sum(len(table) for _, table in self._levels)
