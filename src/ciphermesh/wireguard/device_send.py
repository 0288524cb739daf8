"""The send path: packets from the tunnel to their peer's current session, staged until there is one.

A layer of `Device` (device.py), above the handshake layer it calls when a session must be (re)made.
"""

from __future__ import annotations

from collections.abc import Iterable

from ciphermesh.wireguard.constants import MAX_CONTENT_SIZE, NONCE_PREFIX, PADDING_MULTIPLE
from ciphermesh.wireguard.counters import Drop
from ciphermesh.wireguard.device_handshakes import Handshakes
from ciphermesh.wireguard.keypair import Keypair
from ciphermesh.wireguard.peer import Endpoint, Peer

_ZEROS = bytes(PADDING_MULTIPLE)


def padding_size(size: int, mtu: int) -> int:
    """Zero bytes to append so the length is a multiple of 16, without exceeding the MTU."""
    last_unit = size
    if mtu == 0:
        return -last_unit % PADDING_MULTIPLE
    if last_unit > mtu:
        last_unit %= mtu
    padded = min(last_unit + (-last_unit % PADDING_MULTIPLE), mtu)
    return padded - last_unit


class SendPath(Handshakes):
    """The send layer of the device."""

    def send(self, packet: bytes, now: float) -> None:
        """Encrypt one IP packet from the tunnel towards the peer whose allowed IPs hold its destination."""
        try:
            self._send(packet, now)
        except Exception as exc:  # a malformed packet from the tunnel must not take the device down either
            self._internal_error(exc, now)

    def send_many(self, packets: Iterable[bytes], now: float) -> None:
        """send() for a batch: the same datagrams, with per-peer bookkeeping done once per batch."""
        touched: dict[Peer, Keypair] = {}  # peer -> the keypair data went out on
        lookup = self._routes.lookup
        outgoing = self.outgoing.append
        # Past the rekey limit (below the reject limit) send() handles the packet and the handshake.
        rekey_limit = self._rekey_after_messages
        mtu = self.mtu
        last_dst = b""
        peer: Peer | None = None
        keypair: Keypair | None = None
        endpoint: Endpoint = ("", 0)
        for packet in packets:
            size = len(packet)
            if 20 <= size <= MAX_CONTENT_SIZE and packet[0] >> 4 == 4:
                dst = packet[16:20]
            elif 40 <= size <= MAX_CONTENT_SIZE and packet[0] >> 4 == 6:
                dst = packet[24:40]
            else:
                dst = b""
            if dst != last_dst:
                # Whether the fast path applies is decided once per run of packets to one address.
                last_dst = dst
                peer = lookup(dst) if dst else None
                keypair = peer.keypairs.current if peer is not None else None
                if (
                    peer is None
                    or keypair is None
                    or peer.staged
                    or peer.endpoint is None
                    or keypair.expires <= now
                    or now > keypair.rekey_at
                ):
                    keypair = None
                else:
                    endpoint = peer.endpoint
            if keypair is None or peer is None or keypair.send_counter >= rekey_limit:
                self.send(packet, now)
                last_dst = b""  # send() may have staged packets or started a handshake
                continue
            counter = keypair.send_counter
            keypair.send_counter = counter + 1
            padded = packet
            if size % PADDING_MULTIPLE and size < mtu:
                padded = packet + _ZEROS[: padding_size(size, mtu)]
            counter_bytes = counter.to_bytes(8, "little")
            sealed = keypair.send.encrypt(NONCE_PREFIX + counter_bytes, padded, None)
            datagram = b"".join((keypair.prefix, counter_bytes, sealed))
            outgoing((datagram, endpoint))
            peer.tx_bytes += len(datagram)
            touched[peer] = keypair
        for sent_to, used in touched.items():
            self._sent_data(sent_to, used, now)

    def _send(self, packet: bytes, now: float) -> None:
        size = len(packet)
        if size == 0 or size > MAX_CONTENT_SIZE:
            self.drops.add(Drop.BAD_OUTBOUND_PACKET)
            return
        version = packet[0] >> 4
        if version == 4 and size >= 20:
            dst = packet[16:20]
        elif version == 6 and size >= 40:
            dst = packet[24:40]
        else:
            self.drops.add(Drop.BAD_OUTBOUND_PACKET)
            return
        peer = self._routes.lookup(dst)
        if peer is None:
            self.drops.add(Drop.NO_ROUTE)
            return
        keypair = peer.keypairs.current
        if (
            peer.staged
            or keypair is None
            or keypair.expires <= now
            or keypair.send_counter >= self._reject_after_messages
        ):
            if not peer.stage(packet):
                self.drops.add(Drop.STAGED_OVERFLOW)
            self._send_staged(peer, now)
            return
        self._encrypt(peer, keypair, packet, now)

    def _usable(self, keypair: Keypair | None, now: float) -> bool:
        return (
            keypair is not None
            and keypair.send_counter < self._reject_after_messages
            and now < keypair.expires
        )

    def _encrypt(self, peer: Peer, keypair: Keypair, packet: bytes, now: float) -> None:
        counter = keypair.send_counter
        keypair.send_counter = counter + 1
        size = len(packet)
        if size % PADDING_MULTIPLE and size < self.mtu:
            packet += _ZEROS[: padding_size(size, self.mtu)]
        counter_bytes = counter.to_bytes(8, "little")
        datagram = b"".join(
            (keypair.prefix, counter_bytes, keypair.send.encrypt(NONCE_PREFIX + counter_bytes, packet, None))
        )
        endpoint = peer.endpoint
        if endpoint is None:
            self.drops.add(Drop.NO_ENDPOINT)
        else:
            self.outgoing.append((datagram, endpoint))
            peer.tx_bytes += len(datagram)
        if size:
            self._sent_data(peer, keypair, now)
        else:
            self._sent_authenticated(peer, keypair, now)

    def _sent_authenticated(self, peer: Peer, keypair: Keypair, now: float) -> None:
        """Timers after a transport message to `peer`, and a rekey if `keypair` is due for one."""
        timers = peer.timers
        if timers.persistent_interval:
            timers.persistent_keepalive = now + timers.persistent_interval
        timers.send_keepalive = None
        if keypair.send_counter > self._rekey_after_messages or now > keypair.rekey_at:
            self._send_initiation(peer, now, retry=False)

    def _sent_data(self, peer: Peer, keypair: Keypair, now: float) -> None:
        """As _sent_authenticated, for data (not a keepalive): an answer is now expected."""
        if peer.timers.new_handshake is None:
            peer.timers.data_sent(now)
        self._sent_authenticated(peer, keypair, now)

    def _send_staged(self, peer: Peer, now: float) -> None:
        if not peer.staged:
            return
        keypair = peer.keypairs.current
        if not self._usable(keypair, now):
            self._send_initiation(peer, now, retry=False)
            return
        assert keypair is not None
        staged = peer.staged
        while staged:
            if keypair.send_counter >= self.timing.reject_after_messages:
                self._send_initiation(peer, now, retry=False)
                return
            self._encrypt(peer, keypair, staged.popleft(), now)

    def _send_keepalive(self, peer: Peer, now: float) -> None:
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged(peer, now)
