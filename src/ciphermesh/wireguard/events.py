"""What the device tells its driver besides datagrams and packets: for logs and status."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EventKind(StrEnum):
    HANDSHAKE_INITIATED = "handshakeInitiated"
    HANDSHAKE_RESPONDED = "handshakeResponded"
    HANDSHAKE_COMPLETED = "handshakeCompleted"
    HANDSHAKE_GAVE_UP = "handshakeGaveUp"
    KEYPAIR_CONFIRMED = "keypairConfirmed"
    COOKIE_SENT = "cookieSent"
    COOKIE_RECEIVED = "cookieReceived"
    KEYS_ZEROED = "keysZeroed"
    ENDPOINT_CHANGED = "endpointChanged"
    INTERNAL_ERROR = "internalError"


@dataclass(frozen=True, slots=True)
class Event:
    """`peer` is the peer's base64 public key ("" when none is known); `detail` is free text."""

    kind: EventKind
    peer: str
    at: float
    detail: str = ""
