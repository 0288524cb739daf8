"""Handshake messages: initiations and responses created and consumed, cookies under load, sessions begun.

A layer of `Device` (device.py), above the peer table; the send path uses it to start handshakes.
"""

from __future__ import annotations

from ipaddress import ip_address

from ciphermesh.wireguard.constants import (
    HANDSHAKE_INITIATION_RATE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MIN_MESSAGE_SIZE,
    UNDER_LOAD_AFTER_TIME,
)
from ciphermesh.wireguard.counters import Drop
from ciphermesh.wireguard.device_peers import PeerTable
from ciphermesh.wireguard.events import Event, EventKind
from ciphermesh.wireguard.handshake import (
    Phase,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
)
from ciphermesh.wireguard.keypair import Keypair
from ciphermesh.wireguard.messages import (
    Initiation,
    Response,
    message_type,
    parse_cookie_reply,
    parse_initiation,
    parse_response,
)
from ciphermesh.wireguard.noise import NoiseError
from ciphermesh.wireguard.peer import Endpoint, Peer
from ciphermesh.wireguard.tai64n import after, stamp


class Handshakes(PeerTable):
    """The handshake layer of the device."""

    def _receive_handshake(self, data: bytes, source: Endpoint, now: float) -> Peer | None:
        """A handshake or cookie message; returns the peer whose new session the caller must confirm."""
        if len(data) < MIN_MESSAGE_SIZE:
            self.drops.add(Drop.TOO_SHORT)
            return None
        kind = message_type(data)
        if kind == MESSAGE_COOKIE_REPLY:
            self._receive_cookie_reply(data, now)
            return None
        message: Initiation | Response | None
        if kind == MESSAGE_INITIATION:
            message = parse_initiation(data)
        elif kind == MESSAGE_RESPONSE:
            message = parse_response(data)
        else:
            self.drops.add(Drop.UNKNOWN_TYPE)
            return None
        if message is None:
            self.drops.add(Drop.BAD_SIZE)
            return None
        under_load = self._note_handshake_load(now)
        if not self._checker.check_mac1(data):
            self.drops.add(Drop.BAD_MAC1)
            return None
        if under_load and not self._admit_under_load(data, message.sender, source, now):
            return None
        if isinstance(message, Initiation):
            self._receive_initiation(data, message, source, now)
            return None
        return self._receive_response(data, message, source, now)

    def _note_handshake_load(self, now: float) -> bool:
        if now - self._load_window_start >= 1.0:
            self._load_window_start = now
            self._load_count = 0
        self._load_count += 1
        if self._load_count >= self._load_threshold:
            self._under_load_until = now + UNDER_LOAD_AFTER_TIME
            return True
        return now < self._under_load_until

    def _admit_under_load(self, data: bytes, sender: int, source: Endpoint, now: float) -> bool:
        """Under load a handshake needs a valid mac2 (else we answer with a cookie) and a rate-limit token."""
        address = ip_address(source[0])
        source_bytes = address.packed + source[1].to_bytes(2, "big")
        if not self._checker.check_mac2(data, source_bytes, now):
            reply = self._checker.create_reply(data, sender, source_bytes, now, self._rand)
            self.outgoing.append((reply, source))
            self.drops.add(Drop.COOKIE_REQUIRED)
            self.events.append(Event(EventKind.COOKIE_SENT, "", now, f"to {source[0]}:{source[1]}"))
            return False
        # IPv6 sources share a bucket per /64, as the kernel implementation does.
        key = address.packed if address.version == 4 else address.packed[:8]
        if not self._ratelimiter.allow(key, now):
            self.drops.add(Drop.RATE_LIMITED)
            return False
        return True

    def _receive_initiation(self, data: bytes, message: Initiation, source: Endpoint, now: float) -> None:
        consumed = consume_initiation(self._private, message)
        if consumed is None:
            self.drops.add(Drop.BAD_INITIATION)
            return
        peer = self._peers.get(consumed.remote_static)
        if peer is None:
            self.drops.add(Drop.UNKNOWN_PEER)
            return
        handshake = peer.handshake
        if not after(consumed.timestamp, handshake.last_timestamp):
            self.drops.add(Drop.HANDSHAKE_REPLAY)
            return
        if now - handshake.last_initiation_consumption <= HANDSHAKE_INITIATION_RATE:
            self.drops.add(Drop.HANDSHAKE_FLOOD)
            return
        handshake.noise = consumed.state
        handshake.remote_index = message.sender
        handshake.last_timestamp = consumed.timestamp
        handshake.last_initiation_consumption = max(now, handshake.last_initiation_consumption)
        handshake.phase = Phase.INITIATION_CONSUMED
        peer.timers.any_authenticated_packet_traversal(now)
        peer.timers.any_authenticated_packet_received()
        self._set_endpoint(peer, source, now)
        peer.rx_bytes += len(data)
        self._send_response(peer, now)

    def _send_response(self, peer: Peer, now: float) -> None:
        handshake = peer.handshake
        handshake.last_sent = now
        assert handshake.noise is not None
        self._forget_index(handshake.local_index)
        handshake.local_index = self._new_index(peer)
        try:
            message = create_response(
                handshake.noise,
                peer.psk_bytes,
                ephemeral=self._rand(32),
                sender=handshake.local_index,
                receiver=handshake.remote_index,
            )
        except NoiseError:
            self._forget_index(handshake.local_index)
            handshake.clear()
            self.drops.add(Drop.BAD_INITIATION)
            return
        handshake.phase = Phase.RESPONSE_CREATED
        peer.cookies.add_macs(message, now)
        self._begin_session(peer, now)
        peer.timers.session_derived(now)
        peer.timers.any_authenticated_packet_traversal(now)
        peer.timers.any_authenticated_packet_sent()
        self._emit(peer, bytes(message))
        self.events.append(Event(EventKind.HANDSHAKE_RESPONDED, peer.public_key.to_base64(), now))

    def _receive_response(self, data: bytes, message: Response, source: Endpoint, now: float) -> Peer | None:
        """Begin the session the response completes; returns its peer, to be sent a keepalive."""
        entry = self._index.get(message.receiver)
        if not isinstance(entry, Peer):
            self.drops.add(Drop.UNKNOWN_INDEX)
            return None
        peer = entry
        handshake = peer.handshake
        if handshake.phase is not Phase.INITIATION_CREATED or handshake.noise is None:
            self.drops.add(Drop.BAD_RESPONSE)
            return None
        state = consume_response(handshake.noise, message)
        if state is None:
            self.drops.add(Drop.BAD_RESPONSE)
            return None
        handshake.noise = state
        handshake.remote_index = message.sender
        handshake.phase = Phase.RESPONSE_CONSUMED
        self._set_endpoint(peer, source, now)
        peer.rx_bytes += len(data)
        peer.timers.any_authenticated_packet_traversal(now)
        peer.timers.any_authenticated_packet_received()
        self._begin_session(peer, now)
        peer.timers.session_derived(now)
        self._handshake_complete(peer, now, EventKind.HANDSHAKE_COMPLETED)
        return peer

    def _receive_cookie_reply(self, data: bytes, now: float) -> None:
        reply = parse_cookie_reply(data)
        if reply is None:
            self.drops.add(Drop.BAD_SIZE)
            return
        entry = self._index.get(reply.receiver)
        if entry is None:
            self.drops.add(Drop.UNKNOWN_INDEX)
            return
        peer = entry if isinstance(entry, Peer) else entry.peer
        if not peer.cookies.consume_reply(reply.nonce, reply.encrypted_cookie, now):
            self.drops.add(Drop.BAD_COOKIE_REPLY)
            return
        self.events.append(Event(EventKind.COOKIE_RECEIVED, peer.public_key.to_base64(), now))

    def _send_initiation(self, peer: Peer, now: float, *, retry: bool) -> None:
        if not retry:
            peer.timers.handshake_attempts = 0
        handshake = peer.handshake
        if now - handshake.last_sent < self.timing.rekey_timeout:
            return
        handshake.last_sent = now
        self._forget_index(handshake.local_index)
        handshake.local_index = self._new_index(peer)
        try:
            state, message = create_initiation(
                self._private,
                peer.public_key.raw,
                peer.psk_bytes,
                ephemeral=self._rand(32),
                timestamp=stamp(self._wallclock()),
                sender=handshake.local_index,
            )
        except NoiseError:
            # Only a low-order peer public key gets here; there is nothing to retry.
            self._forget_index(handshake.local_index)
            handshake.clear()
            self.drops.add(Drop.HANDSHAKE_GAVE_UP)
            return
        handshake.noise = state
        handshake.phase = Phase.INITIATION_CREATED
        peer.cookies.add_macs(message, now)
        peer.timers.any_authenticated_packet_traversal(now)
        peer.timers.any_authenticated_packet_sent()
        self._emit(peer, bytes(message))
        peer.timers.handshake_initiated(now)
        self.events.append(
            Event(
                EventKind.HANDSHAKE_INITIATED,
                peer.public_key.to_base64(),
                now,
                f"attempt {peer.timers.handshake_attempts + 1}",
            )
        )

    def _begin_session(self, peer: Peer, now: float) -> None:
        handshake = peer.handshake
        assert handshake.noise is not None
        initiator = handshake.phase is Phase.RESPONSE_CONSUMED
        send_key, receive_key = handshake.noise.transport_keys()
        keypair = Keypair(
            peer,
            send_key,
            receive_key,
            created=now,
            is_initiator=initiator,
            local_index=handshake.local_index,
            remote_index=handshake.remote_index,
            timing=self.timing,
        )
        self._index[handshake.local_index] = keypair
        handshake.clear()
        peer.keypairs.install(keypair)

    def _handshake_complete(self, peer: Peer, now: float, kind: EventKind) -> None:
        peer.timers.handshake_complete()
        peer.last_handshake_wall = self._wallclock()
        self.events.append(Event(kind, peer.public_key.to_base64(), now))
