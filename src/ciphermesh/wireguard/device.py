"""The WireGuard device as a sans-IO state machine.

Inputs: a datagram from the network with its source (`receive`), a packet from the tunnel (`send`),
and the passage of time (`tick`), each with `now` in seconds from any monotonic clock
(`receive_many`/`send_many` take a batch and give the same results). Outputs:
decrypted packets (returned by `receive`), datagrams to send (`outgoing`, drained by the driver),
events, and drop counters. Randomness and the wall clock (for TAI64N) are injected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address

from cryptography.exceptions import InvalidTag

from ciphermesh.wireguard.allowedips import AllowedIPs
from ciphermesh.wireguard.constants import (
    DEFAULT_TIMING,
    HANDSHAKE_INITIATION_RATE,
    MAX_CONTENT_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MIN_MESSAGE_SIZE,
    PADDING_MULTIPLE,
    UNDER_LOAD_AFTER_TIME,
    Timing,
)
from ciphermesh.wireguard.cookie import CookieChecker
from ciphermesh.wireguard.counters import Drop, DropCounters
from ciphermesh.wireguard.events import Event, EventKind
from ciphermesh.wireguard.handshake import (
    Phase,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
)
from ciphermesh.wireguard.keypair import Keypair
from ciphermesh.wireguard.keys import PrivateKey, PublicKey
from ciphermesh.wireguard.messages import (
    Initiation,
    Response,
    message_type,
    parse_cookie_reply,
    parse_initiation,
    parse_response,
)
from ciphermesh.wireguard.noise import NoiseError
from ciphermesh.wireguard.peer import Endpoint, Network, Peer, PeerConfig
from ciphermesh.wireguard.ratelimiter import RateLimiter
from ciphermesh.wireguard.tai64n import after, stamp
from ciphermesh.wireguard.timers import Timer

_TRANSPORT_TYPE = b"\x04\x00\x00\x00"
_NONCE_PREFIX = b"\x00\x00\x00\x00"
_ZEROS = bytes(PADDING_MULTIPLE)
DEFAULT_MTU = 1420
# wireguard-go declares itself under load when 1/8 of its 1024-slot handshake queue is full; we process
# handshakes inline, so the equivalent signal is that many handshake messages within one second.
DEFAULT_HANDSHAKE_LOAD_THRESHOLD = 128


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """What `wg show` reports for a peer; `latest_handshake` is wall-clock seconds or None."""

    public_key: str
    has_preshared_key: bool
    endpoint: Endpoint | None
    allowed_ips: tuple[str, ...]
    latest_handshake: float | None
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int


def padding_size(size: int, mtu: int) -> int:
    """Zero bytes to append so the length is a multiple of 16, without exceeding the MTU."""
    last_unit = size
    if mtu == 0:
        return -last_unit % PADDING_MULTIPLE
    if last_unit > mtu:
        last_unit %= mtu
    padded = min(last_unit + (-last_unit % PADDING_MULTIPLE), mtu)
    return padded - last_unit


class Device:
    """One WireGuard interface: a static key, peers, and the index table shared by their sessions."""

    def __init__(
        self,
        private_key: PrivateKey,
        *,
        randbytes: Callable[[int], bytes],
        wallclock: Callable[[], float],
        timing: Timing = DEFAULT_TIMING,
        mtu: int = DEFAULT_MTU,
        handshake_load_threshold: int = DEFAULT_HANDSHAKE_LOAD_THRESHOLD,
    ) -> None:
        self._private = private_key
        self.public_key: PublicKey = private_key.public_key()
        self._rand = randbytes
        self._wallclock = wallclock
        self.timing = timing
        self.mtu = mtu
        self._reject_after_messages = timing.reject_after_messages
        self._rekey_after_messages = timing.rekey_after_messages
        self._keepalive_timeout = timing.keepalive_timeout
        self._peers: dict[bytes, Peer] = {}
        self._index: dict[int, Keypair | Peer] = {}
        self._routes: AllowedIPs[Peer] = AllowedIPs()
        self._checker = CookieChecker(self.public_key.raw)
        self._ratelimiter = RateLimiter()
        self._load_threshold = handshake_load_threshold
        self._load_window_start = float("-inf")
        self._load_count = 0
        self._under_load_until = float("-inf")
        self.outgoing: list[tuple[bytes, Endpoint]] = []
        self.events: list[Event] = []
        self.drops = DropCounters()

    # Configuration

    def add_peer(self, config: PeerConfig) -> Peer:
        if config.public_key.raw in self._peers:
            raise ValueError(f"peer {config.public_key.to_base64()} already exists")
        if config.public_key == self.public_key:
            raise ValueError("a peer cannot have the interface's own public key")
        peer = Peer(config, timing=self.timing, jitter=self._jitter, forget=self._forget_keypair)
        self._peers[config.public_key.raw] = peer
        for network in config.allowed_ips:
            self._routes.insert(network, peer)
        return peer

    def remove_peer(self, public_key: PublicKey) -> None:
        peer = self._peers.pop(public_key.raw, None)
        if peer is None:
            raise ValueError(f"no peer {public_key.to_base64()}")
        self._routes.remove_owner(peer)
        self._zero_and_flush(peer)
        peer.timers.stop()

    def sync_peers(self, configs: Sequence[PeerConfig]) -> None:
        """Make the peers exactly `configs`, as `wg syncconf` does: peers that stay keep their sessions."""
        wanted = {c.public_key.raw: c for c in configs}
        if len(wanted) != len(configs):
            raise ValueError("a peer appears twice")
        if self.public_key.raw in wanted:
            raise ValueError("a peer cannot have the interface's own public key")
        for raw in [r for r in self._peers if r not in wanted]:
            self.remove_peer(self._peers[raw].public_key)
        for raw, config in wanted.items():
            peer = self._peers.get(raw)
            if peer is None:
                self.add_peer(config)
                continue
            peer.preshared_key = config.preshared_key
            if config.endpoint is not None:
                peer.endpoint = config.endpoint
            peer.timers.persistent_interval = config.persistent_keepalive
            self._routes.remove_owner(peer)
            for network in config.allowed_ips:
                self._routes.insert(network, peer)

    @property
    def peers(self) -> list[Peer]:
        return list(self._peers.values())

    def allowed_ips(self, peer: Peer) -> list[Network]:
        return self._routes.networks_of(peer)

    def peer_status(self) -> list[PeerStatus]:
        return [
            PeerStatus(
                public_key=p.public_key.to_base64(),
                has_preshared_key=p.preshared_key is not None,
                endpoint=p.endpoint,
                allowed_ips=tuple(str(n) for n in self._routes.networks_of(p)),
                latest_handshake=p.last_handshake_wall,
                rx_bytes=p.rx_bytes,
                tx_bytes=p.tx_bytes,
                persistent_keepalive=p.persistent_keepalive,
            )
            for p in self._peers.values()
        ]

    # Outputs

    def take_outgoing(self) -> list[tuple[bytes, Endpoint]]:
        out, self.outgoing = self.outgoing, []
        return out

    def take_events(self) -> list[Event]:
        out, self.events = self.events, []
        return out

    def next_deadline(self) -> float | None:
        deadlines = [d for p in self._peers.values() if (d := p.timers.next_deadline()) is not None]
        return min(deadlines) if deadlines else None

    # Inputs

    def receive(self, datagram: bytes, source: Endpoint, now: float) -> bytes | None:
        """Process one UDP datagram; returns the inner IP packet to deliver, if it carried one."""
        try:
            if datagram[:4] == _TRANSPORT_TYPE and len(datagram) >= MIN_MESSAGE_SIZE:
                return self._receive_transport(datagram, source, now)
            self._receive_other(datagram, source, now)
        except Exception as exc:  # a malformed datagram must never take the device down
            self._internal_error(exc, now)
        return None

    def send(self, packet: bytes, now: float) -> None:
        """Encrypt one IP packet from the tunnel towards the peer whose allowed IPs hold its destination."""
        try:
            self._send(packet, now)
        except Exception as exc:  # nor a malformed packet from the tunnel
            self._internal_error(exc, now)

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
                plain = fast.receive.decrypt(_NONCE_PREFIX + counter_bytes, datagram[16:], None)
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
            sealed = keypair.send.encrypt(_NONCE_PREFIX + counter_bytes, padded, None)
            datagram = b"".join((keypair.prefix, counter_bytes, sealed))
            outgoing((datagram, endpoint))
            peer.tx_bytes += len(datagram)
            touched[peer] = keypair
        for sent_to, used in touched.items():
            self._sent_data(sent_to, used, now)

    def tick(self, now: float) -> None:
        """Run every timer that is due."""
        for peer in list(self._peers.values()):
            for timer in peer.timers.pop_due(now):
                try:
                    self._expire(peer, timer, now)
                except Exception as exc:  # one peer's timer must not stop the others'
                    self._internal_error(exc, now)

    # Transport messages

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
            plain = keypair.receive.decrypt(_NONCE_PREFIX + counter_bytes, data[16:], None)
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
            (keypair.prefix, counter_bytes, keypair.send.encrypt(_NONCE_PREFIX + counter_bytes, packet, None))
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

    # Handshake messages

    def _receive_other(self, data: bytes, source: Endpoint, now: float) -> None:
        if len(data) < MIN_MESSAGE_SIZE:
            self.drops.add(Drop.TOO_SHORT)
            return
        kind = message_type(data)
        if kind == MESSAGE_COOKIE_REPLY:
            self._receive_cookie_reply(data, now)
            return
        message: Initiation | Response | None
        if kind == MESSAGE_INITIATION:
            message = parse_initiation(data)
        elif kind == MESSAGE_RESPONSE:
            message = parse_response(data)
        else:
            self.drops.add(Drop.UNKNOWN_TYPE)
            return
        if message is None:
            self.drops.add(Drop.BAD_SIZE)
            return
        under_load = self._note_handshake_load(now)
        if not self._checker.check_mac1(data):
            self.drops.add(Drop.BAD_MAC1)
            return
        if under_load and not self._admit_under_load(data, message.sender, source, now):
            return
        if isinstance(message, Initiation):
            self._receive_initiation(data, message, source, now)
        else:
            self._receive_response(data, message, source, now)

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

    def _receive_response(self, data: bytes, message: Response, source: Endpoint, now: float) -> None:
        entry = self._index.get(message.receiver)
        if not isinstance(entry, Peer):
            self.drops.add(Drop.UNKNOWN_INDEX)
            return
        peer = entry
        handshake = peer.handshake
        if handshake.phase is not Phase.INITIATION_CREATED or handshake.noise is None:
            self.drops.add(Drop.BAD_RESPONSE)
            return
        state = consume_response(handshake.noise, message)
        if state is None:
            self.drops.add(Drop.BAD_RESPONSE)
            return
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
        self._send_keepalive(peer, now)

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

    # Timers

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

    # Bookkeeping

    def _emit(self, peer: Peer, datagram: bytes) -> None:
        endpoint = peer.endpoint
        if endpoint is None:
            self.drops.add(Drop.NO_ENDPOINT)
            return
        self.outgoing.append((datagram, endpoint))
        peer.tx_bytes += len(datagram)

    def _set_endpoint(self, peer: Peer, source: Endpoint, now: float) -> None:
        if peer.endpoint != source:
            peer.endpoint = source
            detail = f"{source[0]}:{source[1]}"
            self.events.append(Event(EventKind.ENDPOINT_CHANGED, peer.public_key.to_base64(), now, detail))

    def _zero_and_flush(self, peer: Peer) -> None:
        peer.keypairs.clear()
        self._forget_index(peer.handshake.local_index)
        peer.handshake.clear()
        peer.staged.clear()

    def _new_index(self, owner: Peer) -> int:
        while True:
            index = int.from_bytes(self._rand(4), "little")
            if index and index not in self._index:
                self._index[index] = owner
                return index

    def _forget_index(self, index: int) -> None:
        if index and isinstance(self._index.get(index), Peer):
            del self._index[index]

    def _forget_keypair(self, keypair: Keypair) -> None:
        if self._index.get(keypair.local_index) is keypair:
            del self._index[keypair.local_index]

    def _jitter(self) -> float:
        max_ms = int(self.timing.rekey_timeout_jitter_max * 1000)
        if max_ms <= 0:
            return 0.0
        return (int.from_bytes(self._rand(4), "little") % max_ms) / 1000

    def _internal_error(self, exc: Exception, now: float) -> None:
        self.drops.add(Drop.INTERNAL_ERROR)
        self.events.append(Event(EventKind.INTERNAL_ERROR, "", now, f"{type(exc).__name__}: {exc}"))
