"""Sans-IO ESP (RFC 4303, 4106, 4868): security associations, anti-replay, drop counters."""

from ciphermesh.esp.ciphers import AesGcmCipher, CbcHmacCipher, EspCipher, cipher_for
from ciphermesh.esp.counters import Counters, Drop
from ciphermesh.esp.packet import PROTO_ESP, parse_outer, wrap_ipv4, wrap_ipv6
from ciphermesh.esp.replay import ReplayWindow
from ciphermesh.esp.sa import (
    Decapsulated,
    InboundSA,
    InnerPacketError,
    IPAddress,
    Opened,
    OutboundSA,
    SADatabase,
    SequenceExhausted,
)

__all__ = [
    "PROTO_ESP",
    "AesGcmCipher",
    "CbcHmacCipher",
    "Counters",
    "Decapsulated",
    "Drop",
    "EspCipher",
    "IPAddress",
    "InboundSA",
    "InnerPacketError",
    "Opened",
    "OutboundSA",
    "ReplayWindow",
    "SADatabase",
    "SequenceExhausted",
    "cipher_for",
    "parse_outer",
    "wrap_ipv4",
    "wrap_ipv6",
]
