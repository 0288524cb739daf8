"""What the device does when a peer's timer expires (wireguard-go timers.go's expiry functions).

A layer of `Device` (device.py), beside the receive path; the deadlines themselves are in timers.py.
"""

from __future__ import annotations

from ciphermesh.wireguard.counters import Drop
from ciphermesh.wireguard.device_send import SendPath
from ciphermesh.wireguard.events import Event, EventKind
from ciphermesh.wireguard.peer import Peer
from ciphermesh.wireguard.timers import Timer


class TimerActions(SendPath):
    """The timer layer of the device."""

    def tick(self, now: float) -> None:
        """Run every timer that is due."""
        for peer in list(self._peers.values()):
            for timer in peer.timers.pop_due(now):
                try:
                    self._expire(peer, timer, now)
                except Exception as exc:  # one peer's timer must not stop the others'
                    self._internal_error(exc, now)

    def _expire(self, peer: Peer, timer: Timer, now: float) -> None:
        timers = peer.timers
        if timer is Timer.RETRANSMIT_HANDSHAKE:
            if timers.handshake_attempts > self.timing.max_timer_handshakes:
                timers.send_keepalive = None
                if peer.staged:
                    self.drops.add(Drop.HANDSHAKE_GAVE_UP, sum(1 for p in peer.staged if p))
                    peer.staged.clear()
                if timers.zero_key_material is None:
                    timers.zero_key_material = now + self.timing.reject_after_time * 3
                self.events.append(Event(EventKind.HANDSHAKE_GAVE_UP, peer.public_key.to_base64(), now))
            else:
                timers.handshake_attempts += 1
                self._send_initiation(peer, now, retry=True)
        elif timer is Timer.SEND_KEEPALIVE:
            self._send_keepalive(peer, now)
            if timers.need_another_keepalive:
                timers.need_another_keepalive = False
                timers.send_keepalive = now + self.timing.keepalive_timeout
        elif timer is Timer.NEW_HANDSHAKE:
            self._send_initiation(peer, now, retry=False)
        elif timer is Timer.ZERO_KEY_MATERIAL:
            self._zero_and_flush(peer)
            self.events.append(Event(EventKind.KEYS_ZEROED, peer.public_key.to_base64(), now))
        elif timer is Timer.PERSISTENT_KEEPALIVE and timers.persistent_interval > 0:
            self._send_keepalive(peer, now)
