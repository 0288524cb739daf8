"""ESP security associations (RFC 4303 tunnel mode): outbound sealing, inbound checks, SA lookup."""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Literal, overload

from ciphermesh.esp.ciphers import EspCipher
from ciphermesh.esp.counters import Counters, Drop
from ciphermesh.esp.replay import ReplayWindow

IPAddress = IPv4Address | IPv6Address

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
_HEADER_LEN = 8
_SEQ_IV_LEN = 8
_pack_header = struct.Struct(">II").pack
_unpack_header = struct.Struct(">II").unpack_from
_unpack_spi = struct.Struct(">I").unpack_from
_pack_u32 = struct.Struct(">I").pack
_pack_u64 = struct.Struct(">Q").pack
_pack_esn_aad = struct.Struct(">III").pack

# Where the ESN high bits go, fixed per SA so the per-packet code only compares identities.
_ESN_OFF = "off"
_ESN_IN_AAD = "in-aad"
_ESN_AFTER_PAYLOAD = "after-payload"


def _esn_layout(esn: bool, cipher: EspCipher) -> str:
    if not esn:
        return _ESN_OFF
    return _ESN_IN_AAD if cipher.esn_in_aad else _ESN_AFTER_PAYLOAD


# RFC 4303 §2.4 default padding: 1, 2, 3, ...; by pad length.
_PADDINGS = tuple(bytes(range(1, pad_len + 1)) for pad_len in range(256))
_NEXT_HEADER_IPV4 = 4
_NEXT_HEADER_IPV6 = 41
_NEXT_HEADER_NONE = 59
# Tunnel mode: the IP version an inner packet must have and its shortest header, by next header.
_IPV4_INNER = (4, 20)
_IPV6_INNER = (6, 40)
_TUNNEL_INNER: tuple[tuple[int, int] | None, ...] = tuple(
    _IPV4_INNER if nh == _NEXT_HEADER_IPV4 else _IPV6_INNER if nh == _NEXT_HEADER_IPV6 else None
    for nh in range(256)
)


class SequenceExhausted(Exception):  # noqa: N818 - the name agreed with the datapath
    """The outbound SA has used its last sequence number; only a new key (a new SA) can send."""


class InnerPacketError(ValueError):
    """encapsulate() was given something that is not an IPv4 or IPv6 packet."""


@dataclass(frozen=True, slots=True)
class Decapsulated:
    """An authentic tunnel-mode packet: the inner IP packet, its full sequence number, 4 or 41."""

    inner: bytes
    seq: int
    next_header: int


# A frozen dataclass's __init__ goes through object.__setattr__ per field, which costs about as
# much as a third of an AES-GCM call on a 1400-byte packet; the hot path fills the slots directly.
_new_object = object.__new__
_set_inner = vars(Decapsulated)["inner"].__set__
_set_seq = vars(Decapsulated)["seq"].__set__
_set_next_header = vars(Decapsulated)["next_header"].__set__


def _decapsulated(inner: bytes, seq: int, next_header: int) -> Decapsulated:
    result: Decapsulated = _new_object(Decapsulated)
    _set_inner(result, inner)
    _set_seq(result, seq)
    _set_next_header(result, next_header)
    return result


@dataclass(frozen=True, slots=True)
class Opened:
    """An authentic ESP packet without tunnel-mode checks: payload (trailer removed) and next header."""

    payload: bytes
    seq: int
    next_header: int


def _trailer(pad_len: int, next_header: int) -> bytes:
    return _PADDINGS[pad_len] + bytes((pad_len, next_header))


class OutboundSA:
    """Sending side of one SA: numbers, pads and seals packets; never wraps the sequence number."""

    __slots__ = (
        "_align",
        "_cipher",
        "_esn",
        "_esn_layout",
        "_iv_from_seq",
        "_iv_len",
        "_iv_salt",
        "_limit",
        "_randbytes",
        "_seq",
        "_spi",
        "_tunnel_trailers",
        "counters",
    )

    def __init__(
        self,
        spi: int,
        cipher: EspCipher,
        *,
        esn: bool = True,
        iv_salt: int = 0,
        first_seq: int = 1,
        randbytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if not 0 <= spi <= _M32:
            raise ValueError(f"SPI must fit in 32 bits, got {spi}")
        if not 0 <= iv_salt <= _M64:
            raise ValueError("iv_salt must fit in 64 bits")
        limit = _M64 if esn else _M32
        if not 1 <= first_seq <= limit:
            raise ValueError(f"first_seq must be 1..{limit}, got {first_seq}")
        self._spi = spi
        self._cipher = cipher
        self._esn = esn
        self._iv_salt = iv_salt
        self._limit = limit
        self._seq = first_seq - 1
        self._randbytes = randbytes
        self._iv_len = cipher.iv_len
        self._esn_layout = _esn_layout(esn, cipher)
        # Counter modes (GCM) need an IV that never repeats, so it comes from the sequence number
        # as in Linux's seqiv; CBC needs an unpredictable one.
        self._iv_from_seq = cipher.block_size == 1
        if self._iv_from_seq and cipher.iv_len != _SEQ_IV_LEN:
            raise ValueError(f"a counter-mode cipher needs a {_SEQ_IV_LEN}-byte IV (the sequence number)")
        # Pad so that pad length and next header end on a 4-byte boundary, or a whole cipher block.
        self._align = align = max(cipher.block_size, 4)
        # By IP version nibble: the shortest header the receiver accepts, and trailers by pad length.
        by_nibble: list[tuple[int, tuple[bytes, ...]] | None] = [None] * 16
        for next_header, (version, min_len) in (
            (_NEXT_HEADER_IPV4, _IPV4_INNER),
            (_NEXT_HEADER_IPV6, _IPV6_INNER),
        ):
            by_nibble[version] = (min_len, tuple(_trailer(pad, next_header) for pad in range(align)))
        self._tunnel_trailers = by_nibble
        self.counters = Counters()

    @property
    def spi(self) -> int:
        """The SPI this SA sends under."""
        return self._spi

    @property
    def esn(self) -> bool:
        """Whether the sequence number is 64-bit (only the low 32 bits on the wire)."""
        return self._esn

    @property
    def seq(self) -> int:
        """The last sequence number used (first_seq - 1 before the first packet)."""
        return self._seq

    @property
    def exhausted(self) -> bool:
        """True once the last sequence number is used: the SA needs a new key to send again."""
        return self._seq >= self._limit

    def encapsulate(self, inner: bytes) -> bytes:
        """ESP payload (SPI ‖ seq_lo ‖ IV ‖ ciphertext ‖ ICV) carrying an IPv4/IPv6 packet in tunnel mode."""
        tunnel = self._tunnel_trailers[inner[0] >> 4] if inner else None
        if tunnel is None or len(inner) < tunnel[0]:
            self.counters.count(Drop.XfrmOutStateModeError)
            raise InnerPacketError("tunnel mode carries whole IPv4 or IPv6 packets only")
        return self._seal(inner, tunnel[1][-(len(inner) + 2) % self._align])

    def seal(self, payload: bytes, next_header: int) -> bytes:
        """ESP payload for any bytes and next header (no tunnel-mode assumptions)."""
        if not 0 <= next_header <= 0xFF:
            raise ValueError(f"next header must be 0..255, got {next_header}")
        return self._seal(payload, _trailer(-(len(payload) + 2) % self._align, next_header))

    def _seal(self, payload: bytes, trailer: bytes) -> bytes:
        seq = self._seq + 1
        if seq > self._limit:
            self.counters.count(Drop.XfrmOutStateSeqError)
            raise SequenceExhausted(
                f"SPI 0x{self._spi:08x} has sent sequence number {self._limit}, the last one: "
                "it needs a new key"
            )
        self._seq = seq
        seq_lo = seq & _M32
        header = _pack_header(self._spi, seq_lo)
        iv = _pack_u64(seq ^ self._iv_salt) if self._iv_from_seq else self._randbytes(self._iv_len)
        esn_layout = self._esn_layout
        if esn_layout is _ESN_OFF:
            sealed = self._cipher.seal(header, iv, payload + trailer, b"")
        elif esn_layout is _ESN_IN_AAD:
            aad = _pack_esn_aad(self._spi, seq >> 32, seq_lo)
            sealed = self._cipher.seal(aad, iv, payload + trailer, b"")
        else:
            sealed = self._cipher.seal(header, iv, payload + trailer, _pack_u32(seq >> 32))
        packet = header + iv + sealed
        counters = self.counters
        counters.packets_out += 1
        counters.bytes_out += len(packet)
        return packet

    def __repr__(self) -> str:
        return f"OutboundSA(spi=0x{self._spi:08x}, esn={self._esn}, seq={self._seq}, cipher={self._cipher!r})"


class InboundSA:
    """Receiving side of one SA: checks, in RFC 4303 order, length, replay, ICV, padding, mode."""

    __slots__ = (
        "_cipher",
        "_esn",
        "_esn_layout",
        "_expired",
        "_iv_end",
        "_min_len",
        "_spi",
        "counters",
        "replay",
    )

    def __init__(self, spi: int, cipher: EspCipher, *, esn: bool = True, replay_window: int = 1024) -> None:
        if not 0 <= spi <= _M32:
            raise ValueError(f"SPI must fit in 32 bits, got {spi}")
        self._spi = spi
        self._cipher = cipher
        self._esn = esn
        self._expired = False
        self._iv_end = _HEADER_LEN + cipher.iv_len
        self._esn_layout = _esn_layout(esn, cipher)
        # The smallest ciphertext holds pad length and next header, rounded up to a whole block.
        min_ciphertext = max(cipher.block_size, 2)
        self._min_len = self._iv_end + min_ciphertext + cipher.icv_len
        self.replay = ReplayWindow(replay_window, esn)
        self.counters = Counters()

    @property
    def spi(self) -> int:
        """The SPI this SA receives under."""
        return self._spi

    @property
    def esn(self) -> bool:
        """Whether the sequence number is 64-bit (only the low 32 bits on the wire)."""
        return self._esn

    @property
    def max_seq(self) -> int:
        """Highest authenticated sequence number (0 before the first packet)."""
        return self.replay.top

    @property
    def expired(self) -> bool:
        """True once expire() was called: every further packet is dropped."""
        return self._expired

    def expire(self) -> None:
        """Retire the SA (its key was replaced) while keeping it, and its counters, for status."""
        self._expired = True

    def decapsulate(self, esp: bytes) -> Decapsulated | Drop:
        """The inner IPv4/IPv6 packet, or the counted reason for dropping; never raises."""
        return self._receive(esp, True)

    def open(self, esp: bytes) -> Opened | Drop:
        """The authentic payload and next header, or the counted reason for dropping; never raises."""
        return self._receive(esp, False)

    @overload
    def _receive(self, esp: bytes, tunnel: Literal[True]) -> Decapsulated | Drop: ...

    @overload
    def _receive(self, esp: bytes, tunnel: Literal[False]) -> Opened | Drop: ...

    def _receive(self, esp: bytes, tunnel: bool) -> Decapsulated | Opened | Drop:
        if len(esp) < self._min_len:
            return self.counters.count(Drop.XfrmInHdrError)
        spi, seq_lo = _unpack_header(esp)
        if spi != self._spi or self._expired:
            return self.counters.count(Drop.XfrmInStateExpired if self._expired else Drop.XfrmInNoStates)
        replay = self.replay
        seq = replay.infer(seq_lo)
        if seq is None:
            return self.counters.count(Drop.XfrmInStateSeqError)
        iv_end = self._iv_end
        # Ciphertext that is not whole blocks is left to the cipher: it fails as the ICV does.
        esn_layout = self._esn_layout
        if esn_layout is _ESN_OFF:
            plaintext = self._cipher.open(esp[:_HEADER_LEN], esp[_HEADER_LEN:iv_end], esp[iv_end:], b"")
        elif esn_layout is _ESN_IN_AAD:
            aad = _pack_esn_aad(spi, seq >> 32, seq_lo)
            plaintext = self._cipher.open(aad, esp[_HEADER_LEN:iv_end], esp[iv_end:], b"")
        else:
            plaintext = self._cipher.open(
                esp[:_HEADER_LEN], esp[_HEADER_LEN:iv_end], esp[iv_end:], _pack_u32(seq >> 32)
            )
        if plaintext is None:
            return self.counters.count(Drop.XfrmInStateProtoError)
        replay.accept(seq)
        end = len(plaintext) - 2
        pad_len = plaintext[end]
        # Also false when the pad length reaches before the start of the plaintext.
        if not plaintext.endswith(_PADDINGS[pad_len], 0, end):
            return self.counters.count(Drop.EspInBadPadding)
        next_header = plaintext[-1]
        payload = plaintext[: end - pad_len]
        if tunnel:
            inner = _TUNNEL_INNER[next_header]
            if inner is None or len(payload) < inner[1] or payload[0] >> 4 != inner[0]:
                dummy = next_header == _NEXT_HEADER_NONE
                return self.counters.count(Drop.EspInDummyPacket if dummy else Drop.XfrmInStateModeError)
        counters = self.counters
        counters.packets_in += 1
        counters.bytes_in += len(esp)
        if tunnel:
            return _decapsulated(payload, seq, next_header)
        return Opened(payload, seq, next_header)

    def __repr__(self) -> str:
        return (
            f"InboundSA(spi=0x{self._spi:08x}, esn={self._esn}, max_seq={self.max_seq}, "
            f"window={self.replay.size}, cipher={self._cipher!r})"
        )


def _packed(address: IPAddress | bytes) -> bytes:
    return address if isinstance(address, bytes) else address.packed


class SADatabase:
    """Inbound SAs by (outer source, outer destination, SPI); counts drops that have no SA to blame."""

    __slots__ = ("_sas", "counters")

    def __init__(self) -> None:
        self._sas: dict[tuple[bytes, bytes, int], InboundSA] = {}
        self.counters = Counters()

    def add(self, src: IPAddress, dst: IPAddress, sa: InboundSA) -> None:
        """Install `sa` for packets from src to dst, replacing any SA with the same triple."""
        if src.version != dst.version:
            raise ValueError(f"outer addresses {src} and {dst} are of different IP versions")
        self._sas[(src.packed, dst.packed, sa.spi)] = sa

    def remove(self, src: IPAddress, dst: IPAddress, spi: int) -> InboundSA | None:
        """Uninstall and return the SA for the triple, or None if there was none."""
        return self._sas.pop((src.packed, dst.packed, spi), None)

    def get(self, src: IPAddress | bytes, dst: IPAddress | bytes, spi: int) -> InboundSA | None:
        """The SA for the triple, or None."""
        return self._sas.get((_packed(src), _packed(dst), spi))

    def entries(self) -> list[tuple[IPAddress, IPAddress, InboundSA]]:
        """Every installed SA with its outer source and destination."""
        return [(ip_address(src), ip_address(dst), sa) for (src, dst, _), sa in self._sas.items()]

    def __len__(self) -> int:
        return len(self._sas)

    def totals(self) -> Counters:
        """Counters summed over the database's own drops and every installed SA."""
        return Counters.total([self.counters, *(sa.counters for sa in self._sas.values())])

    def decapsulate(self, src: IPAddress | bytes, dst: IPAddress | bytes, esp: bytes) -> Decapsulated | Drop:
        """Find the SA for the packet (addresses as objects or packed bytes) and decapsulate; never raises."""
        if len(esp) < _HEADER_LEN:
            return self.counters.count(Drop.XfrmInHdrError)
        sa = self._sas.get((_packed(src), _packed(dst), _unpack_spi(esp)[0]))
        if sa is None:
            return self.counters.count(Drop.XfrmInNoStates)
        return sa.decapsulate(esp)
