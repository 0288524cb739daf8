"""A peer's five timers as deadlines (whitepaper 6.2-6.5, wireguard-go timers.go); time is an argument."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from ciphermesh.wireguard.constants import Timing


class Timer(StrEnum):
    RETRANSMIT_HANDSHAKE = "retransmitHandshake"
    SEND_KEEPALIVE = "sendKeepalive"
    NEW_HANDSHAKE = "newHandshake"
    ZERO_KEY_MATERIAL = "zeroKeyMaterial"
    PERSISTENT_KEEPALIVE = "persistentKeepalive"


class PeerTimers:
    """Deadlines (None = not pending) and the flags the expiry actions consult."""

    __slots__ = (
        "_jitter",
        "handshake_attempts",
        "need_another_keepalive",
        "new_handshake",
        "persistent_interval",
        "persistent_keepalive",
        "retransmit_handshake",
        "send_keepalive",
        "sent_last_minute_handshake",
        "timing",
        "zero_key_material",
    )

    def __init__(self, timing: Timing, jitter: Callable[[], float], persistent_interval: int = 0) -> None:
        self.timing = timing
        self._jitter = jitter
        self.persistent_interval = persistent_interval
        self.retransmit_handshake: float | None = None
        self.send_keepalive: float | None = None
        self.new_handshake: float | None = None
        self.zero_key_material: float | None = None
        self.persistent_keepalive: float | None = None
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        self.sent_last_minute_handshake = False

    def data_sent(self, now: float) -> None:
        """After an authenticated data packet is sent: expect an answer within keepalive + rekey timeout."""
        if self.new_handshake is None:
            t = self.timing
            self.new_handshake = now + t.keepalive_timeout + t.rekey_timeout + self._jitter()

    def data_received(self, now: float) -> None:
        """After an authenticated data packet is received: owe the peer a keepalive if we stay silent."""
        if self.send_keepalive is None:
            self.send_keepalive = now + self.timing.keepalive_timeout
        else:
            self.need_another_keepalive = True

    def any_authenticated_packet_sent(self) -> None:
        self.send_keepalive = None

    def any_authenticated_packet_received(self) -> None:
        self.new_handshake = None

    def any_authenticated_packet_traversal(self, now: float) -> None:
        if self.persistent_interval > 0:
            self.persistent_keepalive = now + self.persistent_interval

    def handshake_initiated(self, now: float) -> None:
        self.retransmit_handshake = now + self.timing.rekey_timeout + self._jitter()

    def handshake_complete(self) -> None:
        self.retransmit_handshake = None
        self.handshake_attempts = 0
        self.sent_last_minute_handshake = False

    def session_derived(self, now: float) -> None:
        self.zero_key_material = now + self.timing.reject_after_time * 3

    def next_deadline(self) -> float | None:
        pending = [
            d
            for d in (
                self.retransmit_handshake,
                self.send_keepalive,
                self.new_handshake,
                self.zero_key_material,
                self.persistent_keepalive,
            )
            if d is not None
        ]
        return min(pending) if pending else None

    def pop_due(self, now: float) -> list[Timer]:
        """The timers whose deadline has passed, earliest first, each cleared as it fires."""
        due: list[tuple[float, Timer]] = []
        for timer, deadline in (
            (Timer.RETRANSMIT_HANDSHAKE, self.retransmit_handshake),
            (Timer.SEND_KEEPALIVE, self.send_keepalive),
            (Timer.NEW_HANDSHAKE, self.new_handshake),
            (Timer.ZERO_KEY_MATERIAL, self.zero_key_material),
            (Timer.PERSISTENT_KEEPALIVE, self.persistent_keepalive),
        ):
            if deadline is not None and deadline <= now:
                due.append((deadline, timer))
        due.sort()
        for _, timer in due:
            setattr(self, _ATTRIBUTE[timer], None)
        return [timer for _, timer in due]

    def stop(self) -> None:
        for attribute in _ATTRIBUTE.values():
            setattr(self, attribute, None)


_ATTRIBUTE = {
    Timer.RETRANSMIT_HANDSHAKE: "retransmit_handshake",
    Timer.SEND_KEEPALIVE: "send_keepalive",
    Timer.NEW_HANDSHAKE: "new_handshake",
    Timer.ZERO_KEY_MATERIAL: "zero_key_material",
    Timer.PERSISTENT_KEEPALIVE: "persistent_keepalive",
}
