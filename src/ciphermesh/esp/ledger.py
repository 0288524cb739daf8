"""The one rule on sequence counters: an SA's counter never starts over under a key it has used.

A receiver keeps its replay window for as long as it holds a key, and a sender that starts at 1 again
under that key is dropped as a replay until it passes the old count (issue 10: a peer's lease expired,
it came back with the same boot ID and keys, and its tunnel was down for as long as it had been up).
So an engine makes one SA per (direction, outer source, outer destination, SPI, key) for its whole
life and hands that same SA back whenever the identity is wanted again: the sender goes on above the
last number it sent, with the same IV salt, and the receiver keeps its window, so neither accepts
replays nor misreads ESN high bits. Whatever cannot keep the ledger (a new process) needs new keys:
the agent takes a new boot ID on every start.

Only the latest key per (direction, source, destination, SPI) is remembered: a receiver holds one SA
per triple, so once the key for a triple changed (a new boot ID on either side, or a new key under
that SPI after 15 rotations), no receiver still holds a window for the older one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from ciphermesh.esp.counters import Counters
from ciphermesh.esp.sa import InboundSA, OutboundSA

# (outer source, outer destination, SPI), packed addresses.
Triple = tuple[bytes, bytes, int]
SA = TypeVar("SA", OutboundSA, InboundSA)


class SALedger:
    """Every SA an engine holds or has held, by direction, triple and key; never two for one identity."""

    __slots__ = ("_inbound", "_outbound", "retired")

    def __init__(self) -> None:
        self._outbound: dict[Triple, tuple[Hashable, OutboundSA]] = {}
        self._inbound: dict[Triple, tuple[Hashable, InboundSA]] = {}
        self.retired = Counters()
        """Counters of SAs whose triple moved to another key: they can never be used again."""

    def outbound(self, triple: Triple, key: Hashable, make: Callable[[], OutboundSA]) -> OutboundSA:
        """The sending SA for `triple` under `key`: the one made before if there was one, else `make()`."""
        return _wanted(self._outbound, triple, key, make, self.retired)

    def inbound(self, triple: Triple, key: Hashable, make: Callable[[], InboundSA]) -> InboundSA:
        """The receiving SA for `triple` under `key`, window and all: the one made before, else `make()`."""
        return _wanted(self._inbound, triple, key, make, self.retired)

    @contextmanager
    def all_or_nothing(self) -> Iterator[None]:
        """Undo what the block changed if it raises: a state refused halfway must not forget a live SA."""
        outbound, inbound, retired = dict(self._outbound), dict(self._inbound), Counters.total([self.retired])
        try:
            yield
        except BaseException:
            self._outbound, self._inbound, self.retired = outbound, inbound, retired
            raise

    def counters(self) -> list[Counters]:
        """The counters of every SA remembered, in use or not."""
        return [sa.counters for table in (self._outbound, self._inbound) for _, sa in table.values()]

    def __len__(self) -> int:
        return len(self._outbound) + len(self._inbound)


def _wanted(
    table: dict[Triple, tuple[Hashable, SA]], triple: Triple, key: Hashable, make: Callable[[], SA],
    retired: Counters,
) -> SA:
    held = table.get(triple)
    if held is not None:
        if held[0] == key:
            return held[1]
        retired.add(held[1].counters)
    sa = make()
    table[triple] = (key, sa)
    return sa
