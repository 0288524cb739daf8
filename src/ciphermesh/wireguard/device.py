"""The WireGuard device as a sans-IO state machine.

Inputs: a datagram from the network with its source (`receive`), a packet from the tunnel (`send`),
and the passage of time (`tick`), each with `now` in seconds from any monotonic clock
(`receive_many`/`send_many` take a batch and give the same results). Outputs:
decrypted packets (returned by `receive`), datagrams to send (`outgoing`, drained by the driver),
events, and drop counters. Randomness and the wall clock (for TAI64N) are injected.

`Device` is built in layers, one module per concern, as wireguard-go splits device/; each layer calls
only those below it: device_peers (state, configuration, index table) <- device_handshakes <-
device_send <- device_receive and device_timers.
"""

from __future__ import annotations

from ciphermesh.wireguard.constants import DEFAULT_HANDSHAKE_LOAD_THRESHOLD, DEFAULT_MTU
from ciphermesh.wireguard.device_peers import PeerStatus
from ciphermesh.wireguard.device_receive import ReceivePath
from ciphermesh.wireguard.device_send import padding_size
from ciphermesh.wireguard.device_timers import TimerActions
from ciphermesh.wireguard.events import Event
from ciphermesh.wireguard.peer import Endpoint

__all__ = ["DEFAULT_HANDSHAKE_LOAD_THRESHOLD", "DEFAULT_MTU", "Device", "PeerStatus", "padding_size"]


class Device(ReceivePath, TimerActions):
    """One WireGuard interface: a static key, peers, and the index table shared by their sessions."""

    # Outputs

    def take_outgoing(self) -> list[tuple[bytes, Endpoint]]:
        out, self.outgoing = self.outgoing, []
        return out

    def take_events(self) -> list[Event]:
        out, self.events = self.events, []
        return out

    def next_deadline(self) -> float | None:
        deadlines = [d for p in self._peers.values() if (d := p.timers.next_deadline()) is not None]
        return min(deadlines) if deadlines else None
