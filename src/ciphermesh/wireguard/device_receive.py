"""The receive path: datagrams from the network, transport data decrypted and checked, handshakes passed on.

A layer of `Device` (device.py), the topmost with the timer layer.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography.exceptions import InvalidTag

from ciphermesh.wireguard.constants import MIN_MESSAGE_SIZE, NONCE_PREFIX
from ciphermesh.wireguard.counters import Drop
from ciphermesh.wireguard.device_send import SendPath
from ciphermesh.wireguard.events import EventKind
from ciphermesh.wireguard.keypair import Keypair
from ciphermesh.wireguard.peer import Endpoint, Peer

_TRANSPORT_TYPE = b"\x04\x00\x00\x00"


class ReceivePath(SendPath):
    """The receive layer of the device."""

    def receive(self, datagram: bytes, source: Endpoint, now: float) -> bytes | None:
        """Process one UDP datagram; returns the inner IP packet to deliver, if it carried one."""
        try:
            if datagram[:4] == _TRANSPORT_TYPE and len(datagram) >= MIN_MESSAGE_SIZE:
                return self._receive_transport(datagram, source, now)
            confirm = self._receive_handshake(datagram, source, now)
            if confirm is not None:
                # The initiator confirms the new session with a keepalive (or the packets staged for it).
                self._send_keepalive(confirm, now)
        except Exception as exc:  # a malformed datagram must never take the device down
            self._internal_error(exc, now)
        return None

    def receive_many(self, datagrams: Iterable[tuple[bytes, Endpoint]], now: float) -> list[bytes]:
        """receive() for a batch: the same results, with per-peer bookkeeping done once per batch."""
        delivered: list[bytes] = []
        deliver = delivered.append
        touched: dict[Peer, int] = {}  # peer -> data packets received in this batch
        index_get = self._index.get
        drops = self.drops
        limit = self._reject_after_messages
        last_head = b""
        fast: Keypair | None = None
        endpoint: Endpoint | None = None
        for datagram, source in datagrams:
            head = datagram[:8]
            if head != last_head:
                # Whether the fast path applies is decided once per run of datagrams to one index:
                # data on the current keypair, not about to expire, from the known endpoint. The rest
                # (handshakes, a keypair to confirm, roaming) takes receive().
                last_head = head
                fast = None
                if head[:4] == _TRANSPORT_TYPE:
                    keypair = index_get(int.from_bytes(head[4:8], "little"))
                    if (
                        isinstance(keypair, Keypair)
                        and keypair.expires >= now
                        and keypair.peer.keypairs.current is keypair
                        and now <= keypair.last_minute_at
                    ):
                        fast = keypair
                        endpoint = keypair.peer.endpoint
            if fast is None or source != endpoint or len(datagram) < MIN_MESSAGE_SIZE:
                packet = self.receive(datagram, source, now)
                if packet is not None:
                    deliver(packet)
                last_head = b""  # receive() may have changed the keypairs or the endpoint
                continue
            counter_bytes = datagram[8:16]
            try:
                plain = fast.receive.decrypt(NONCE_PREFIX + counter_bytes, datagram[16:], None)
            except InvalidTag:
                drops.add(Drop.DECRYPT_FAILED)
                continue
            if not fast.replay.validate(int.from_bytes(counter_bytes, "little"), limit):
                drops.add(Drop.REPLAYED)
                continue
            peer = fast.peer
            peer.rx_bytes += len(datagram)
            if not plain:
                touched.setdefault(peer, 0)
                continue
            touched[peer] = touched.get(peer, 0) + 1
            packet = self._inner(peer, plain)
            if packet is not None:
                deliver(packet)
        for peer, data_packets in touched.items():
            self._received_authenticated(peer, data_packets, now)
        return delivered

    def _receive_transport(self, data: bytes, source: Endpoint, now: float) -> bytes | None:
        # The hot path: attribute chains are cut short on purpose, each costs on every packet.
        keypair = self._index.get(int.from_bytes(data[4:8], "little"))
        if not isinstance(keypair, Keypair):
            self.drops.add(Drop.UNKNOWN_INDEX)
            return None
        if keypair.expires < now:
            self.drops.add(Drop.KEYPAIR_EXPIRED)
            return None
        counter_bytes = data[8:16]
        try:
            plain = keypair.receive.decrypt(NONCE_PREFIX + counter_bytes, data[16:], None)
        except InvalidTag:
            self.drops.add(Drop.DECRYPT_FAILED)
            return None
        if not keypair.replay.validate(int.from_bytes(counter_bytes, "little"), self._reject_after_messages):
            self.drops.add(Drop.REPLAYED)
            return None
        peer = keypair.peer
        keypairs = peer.keypairs
        if keypairs.next is keypair and keypairs.confirm(keypair):
            self._set_endpoint(peer, source, now)
            self._handshake_complete(peer, now, EventKind.KEYPAIR_CONFIRMED)
            self._send_staged(peer, now)
        if peer.endpoint != source:
            self._set_endpoint(peer, source, now)
        peer.rx_bytes += len(data)
        self._received_authenticated(peer, 1 if plain else 0, now)
        if not plain:
            return None
        return self._inner(peer, plain)

    def _received_authenticated(self, peer: Peer, data_packets: int, now: float) -> None:
        """Timers after transport messages from `peer`; `data_packets` of them were not keepalives."""
        timers = peer.timers
        current = peer.keypairs.current
        if current is not None and now > current.last_minute_at and not timers.sent_last_minute_handshake:
            timers.sent_last_minute_handshake = True
            self._send_initiation(peer, now, retry=False)
        if timers.persistent_interval:
            timers.persistent_keepalive = now + timers.persistent_interval
        timers.new_handshake = None
        if data_packets:
            if timers.send_keepalive is None:
                timers.send_keepalive = now + self._keepalive_timeout
                if data_packets > 1:
                    timers.need_another_keepalive = True
            else:
                timers.need_another_keepalive = True

    def _inner(self, peer: Peer, plain: bytes) -> bytes | None:
        """The decrypted packet if it is a whole IP packet from one of `peer`'s allowed IPs."""
        size = len(plain)
        version = plain[0] >> 4
        if version == 4 and size >= 20:
            total = (plain[2] << 8) | plain[3]
            if total > size or total < 20:
                self.drops.add(Drop.BAD_INNER_PACKET)
                return None
            if total < size:
                plain = plain[:total]
            src = plain[12:16]
        elif version == 6 and size >= 40:
            total = ((plain[4] << 8) | plain[5]) + 40
            if total > size:
                self.drops.add(Drop.BAD_INNER_PACKET)
                return None
            if total < size:
                plain = plain[:total]
            src = plain[8:24]
        else:
            self.drops.add(Drop.BAD_INNER_PACKET)
            return None
        if self._routes.lookup(src) is not peer:
            self.drops.add(Drop.DISALLOWED_SOURCE)
            return None
        return plain
