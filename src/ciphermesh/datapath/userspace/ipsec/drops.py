"""Drops the userspace IPsec engine counts itself, beside the ones its SAs count."""

from __future__ import annotations

from enum import StrEnum


class EngineDrop(StrEnum):
    """A packet the engine dropped outside any SA; Linux XFRM's counter name where one fits."""

    XfrmOutNoStates = "XfrmOutNoStates"
    """No peer owns the inner destination, or that peer has no outbound SA."""
    XfrmOutStateModeError = "XfrmOutStateModeError"
    """The TUN gave something that is not a whole IPv4/IPv6 header, so it has no destination to route."""
    XfrmInHdrError = "XfrmInHdrError"
    """The raw socket gave a packet whose outer IPv4 header does not parse."""
    XfrmInTmplMismatch = "XfrmInTmplMismatch"
    """Authentic packet whose inner source is outside the sending peer's pod CIDRs (XFRM's selector check)."""
    EngineOutLoop = "EngineOutLoop"
    """The engine's own ESP came back through the TUN: the ESP route to the peer's router IP is missing."""
    EngineOutSendError = "EngineOutSendError"
    """sendmsg() of an ESP packet failed (no route, unreachable, buffer full, too big)."""
    EngineInDeliverError = "EngineInDeliverError"
    """Writing a decapsulated packet to the TUN device failed."""
    EngineReadError = "EngineReadError"
    """Reading the TUN device or the raw socket failed with something other than "nothing queued"."""
    EngineTunOffloaded = "EngineTunOffloaded"
    """The TUN handed over a GSO packet (offloads set on the device by someone else); it is dropped."""
    EngineInternalError = "EngineInternalError"
    """Processing one packet raised unexpectedly (a bug); the packet is dropped and the loop goes on."""


def new_drop_counts() -> dict[str, int]:
    """Every engine drop counter, at zero."""
    return dict.fromkeys(EngineDrop, 0)
