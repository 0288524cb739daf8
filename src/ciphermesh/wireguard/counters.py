"""Why a datagram or packet was dropped: the counter names `wireguard show -o json` reports."""

from __future__ import annotations

from enum import StrEnum


class Drop(StrEnum):
    # Datagrams from the network
    TOO_SHORT = "tooShort"
    UNKNOWN_TYPE = "unknownType"
    BAD_SIZE = "badSize"
    BAD_MAC1 = "badMac1"
    COOKIE_REQUIRED = "cookieRequired"
    RATE_LIMITED = "rateLimited"
    BAD_INITIATION = "badInitiation"
    UNKNOWN_PEER = "unknownPeer"
    HANDSHAKE_REPLAY = "handshakeReplay"
    HANDSHAKE_FLOOD = "handshakeFlood"
    BAD_RESPONSE = "badResponse"
    BAD_COOKIE_REPLY = "badCookieReply"
    UNKNOWN_INDEX = "unknownIndex"
    KEYPAIR_EXPIRED = "keypairExpired"
    DECRYPT_FAILED = "decryptFailed"
    REPLAYED = "replayed"
    BAD_INNER_PACKET = "badInnerPacket"
    DISALLOWED_SOURCE = "disallowedSource"
    # Packets from the tunnel device
    BAD_OUTBOUND_PACKET = "badOutboundPacket"
    NO_ROUTE = "noRoute"
    NO_ENDPOINT = "noEndpoint"
    STAGED_OVERFLOW = "stagedOverflow"
    HANDSHAKE_GAVE_UP = "handshakeGaveUp"
    INTERNAL_ERROR = "internalError"


class DropCounters:
    """A count per Drop reason; only reasons that happened appear in as_dict()."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[Drop, int] = {}

    def add(self, reason: Drop, n: int = 1) -> None:
        self._counts[reason] = self._counts.get(reason, 0) + n

    def __getitem__(self, reason: Drop) -> int:
        return self._counts.get(reason, 0)

    def total(self) -> int:
        return sum(self._counts.values())

    def as_dict(self) -> dict[str, int]:
        return {str(k): v for k, v in sorted(self._counts.items())}
