"""WireGuard's handshake messages: Noise_IKpsk2 with the WireGuard identifier as prologue (whitepaper 5.4)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ciphermesh.wireguard.constants import CONSTRUCTION, IDENTIFIER
from ciphermesh.wireguard.keys import PrivateKey
from ciphermesh.wireguard.messages import (
    Initiation,
    Response,
    pack_initiation_unmacked,
    pack_response_unmacked,
)
from ciphermesh.wireguard.noise import PATTERNS, HandshakeState, NoiseError
from ciphermesh.wireguard.tai64n import TIMESTAMP_SIZE

_PATTERN = PATTERNS["IKpsk2"]


class Phase(Enum):
    ZEROED = 0
    INITIATION_CREATED = 1
    INITIATION_CONSUMED = 2
    RESPONSE_CREATED = 3
    RESPONSE_CONSUMED = 4


class Handshake:
    """A peer's handshake in progress, plus what replay and flood protection remember between them."""

    __slots__ = (
        "last_initiation_consumption",
        "last_sent",
        "last_timestamp",
        "local_index",
        "noise",
        "phase",
        "remote_index",
    )

    def __init__(self) -> None:
        self.phase = Phase.ZEROED
        self.noise: HandshakeState | None = None
        self.local_index = 0
        self.remote_index = 0
        self.last_timestamp = bytes(TIMESTAMP_SIZE)
        self.last_initiation_consumption = float("-inf")
        self.last_sent = float("-inf")

    def clear(self) -> None:
        self.phase = Phase.ZEROED
        self.noise = None
        self.local_index = 0


def _state(initiator: bool, static: PrivateKey, remote: bytes | None, psk: bytes | None) -> HandshakeState:
    return HandshakeState(
        _PATTERN,
        initiator=initiator,
        prologue=IDENTIFIER,
        s=static.x25519(),
        rs=remote,
        psk=psk,
        protocol_name=CONSTRUCTION,
    )


def create_initiation(
    static: PrivateKey, remote_static: bytes, psk: bytes, *, ephemeral: bytes, timestamp: bytes, sender: int
) -> tuple[HandshakeState, bytearray]:
    """The initiation (MACs still zero) and the state that will read the response."""
    state = _state(True, static, remote_static, psk)
    body = state.write_message(timestamp, ephemeral)
    return state, pack_initiation_unmacked(sender, body)


@dataclass(frozen=True, slots=True)
class ConsumedInitiation:
    state: HandshakeState
    remote_static: bytes
    timestamp: bytes


def consume_initiation(static: PrivateKey, message: Initiation) -> ConsumedInitiation | None:
    """Decrypt an initiation sent to `static`; None if it does not authenticate."""
    state = _state(False, static, None, None)
    try:
        timestamp = state.read_message(message.body)
    except NoiseError:
        return None
    if state.rs is None:
        return None
    return ConsumedInitiation(state, state.rs, timestamp)


def create_response(
    state: HandshakeState, psk: bytes, *, ephemeral: bytes, sender: int, receiver: int
) -> bytearray:
    """The response to a consumed initiation (MACs still zero); `state` then holds the session."""
    state.psk = psk
    body = state.write_message(b"", ephemeral)
    return pack_response_unmacked(sender, receiver, body)


def consume_response(state: HandshakeState, message: Response) -> HandshakeState | None:
    """The state after reading `message`, or None; `state` itself is left as it was."""
    trial = state.copy()
    try:
        trial.read_message(message.body)
    except NoiseError:
        return None
    return trial
