"""Cryptokey routing: longest-prefix match from an address to the peer that owns it."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from typing import Generic, TypeVar

T = TypeVar("T")
Network = IPv4Network | IPv6Network
_CACHE_MAX = 65536


class AllowedIPs(Generic[T]):
    """Each prefix has one owner; inserting a prefix another value owns moves it (as `wg set` does)."""

    __slots__ = ("_cache", "_lengths", "_tables")

    def __init__(self) -> None:
        # address length in bytes -> prefix length -> (address >> host bits) -> owner
        self._tables: dict[int, dict[int, dict[int, T]]] = {4: {}, 16: {}}
        self._lengths: dict[int, list[int]] = {4: [], 16: []}
        self._cache: dict[bytes, T | None] = {}

    def insert(self, network: Network, owner: T) -> None:
        size = 4 if network.version == 4 else 16
        host_bits = network.max_prefixlen - network.prefixlen
        table = self._tables[size].setdefault(network.prefixlen, {})
        table[int(network.network_address) >> host_bits] = owner
        self._changed(size)

    def remove_owner(self, owner: T) -> None:
        for size, by_length in self._tables.items():
            for table in by_length.values():
                for key in [k for k, v in table.items() if v is owner]:
                    del table[key]
            self._changed(size)

    def networks_of(self, owner: T) -> list[Network]:
        """The prefixes `owner` holds, IPv4 first, longest prefix first."""
        out: list[Network] = []
        for size, by_length in self._tables.items():
            bits = size * 8
            for length in sorted(by_length, reverse=True):
                for key, value in by_length[length].items():
                    if value is owner:
                        address = key << (bits - length)
                        network: Network = (
                            IPv4Network((address, length)) if size == 4 else IPv6Network((address, length))
                        )
                        out.append(network)
        return out

    def lookup(self, address: bytes) -> T | None:
        """The owner of a 4- or 16-byte address, or None."""
        cache = self._cache
        if address in cache:
            return cache[address]
        found = self._search(address)
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[address] = found
        return found

    def _search(self, address: bytes) -> T | None:
        size = len(address)
        by_length = self._tables.get(size)
        if by_length is None:
            return None
        value = int.from_bytes(address, "big")
        bits = size * 8
        for length in self._lengths[size]:
            owner = by_length[length].get(value >> (bits - length))
            if owner is not None:
                return owner
        return None

    def _changed(self, size: int) -> None:
        by_length = self._tables[size]
        for length in [n for n, table in by_length.items() if not table]:
            del by_length[length]
        self._lengths[size] = sorted(by_length, reverse=True)
        self._cache.clear()
