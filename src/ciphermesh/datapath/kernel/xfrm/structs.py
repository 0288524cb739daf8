"""The kernel's XFRM C structs in host byte order (addresses, ports and SPI in network order)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

from ciphermesh.datapath.kernel.xfrm.constants import AF_INET, AF_INET6, AF_UNSPEC, XFRM_INF
from ciphermesh.datapath.kernel.xfrm.errors import XfrmDecodeError
from ciphermesh.datapath.kernel.xfrm.model import NO_ADDRESS, Address, Mark, Prefix, Selector, Template

# xfrm_selector: daddr, saddr, dport, dport_mask, sport, sport_mask (be16), family, prefixlen_d,
# prefixlen_s, proto, 3 bytes padding, ifindex, user.
SELECTOR = struct.Struct("=16s16s2s2s2s2sHBBB3xiI")
# xfrm_id: daddr, spi (be32), proto, padding.
XFRM_ID = struct.Struct("=16s4sB3x")
LIFETIME_CFG = struct.Struct("=8Q")
LIFETIME_CUR = struct.Struct("=4Q")
STATS = struct.Struct("=3I")
# Structs that open with an xfrm_selector hold it as SELECTOR.size bytes, then these fields.
# xfrm_usersa_info after sel: id (daddr, spi, proto), saddr, lft, curlft, stats, seq, reqid, family, mode,
# replay_window, flags.
USERSA_INFO_TAIL = struct.Struct("=16s4sB3x16s8Q4Q3IIIHBBB7x")
# xfrm_usersa_id: daddr, spi (be32), family, proto, padding.
USERSA_ID = struct.Struct("=16s4sHBx")
USERSA_FLUSH = struct.Struct("=B")
# xfrm_userpolicy_info after sel: lft, curlft, priority, index, dir, action, flags, share, padding.
USERPOLICY_INFO_TAIL = struct.Struct("=8Q4QIIBBBB4x")
# xfrm_userpolicy_id after sel: index, dir, padding.
USERPOLICY_ID_TAIL = struct.Struct("=IB3x")
# xfrm_user_tmpl: id, family, padding, saddr, reqid, mode, share, optional, padding, aalgos, ealgos, calgos.
USER_TMPL = struct.Struct("=16s4sB3xH2x16sIBBBxIII")
ALGO_NAME = struct.Struct("=64s")
# xfrm_algo_aead: name, key length (bits), ICV length (bits), key.
ALGO_AEAD = struct.Struct("=64sII")
# xfrm_algo: name, key length (bits), key. xfrm_algo_auth: name, key length, truncation (bits), key.
ALGO = struct.Struct("=64sI")
ALGO_AUTH = struct.Struct("=64sII")
MARK = struct.Struct("=II")
# xfrm_replay_state_esn: bmp_len (u32 words), oseq, seq, oseq_hi, seq_hi, replay_window; bitmap follows.
REPLAY_ESN = struct.Struct("=6I")
# xfrm_replay_state: oseq, seq, bitmap.
REPLAY = struct.Struct("=3I")
# xfrm_address_filter: saddr, daddr, family, splen, dplen.
ADDRESS_FILTER = struct.Struct("=16s16sHBB")

USERSA_INFO_SIZE = SELECTOR.size + USERSA_INFO_TAIL.size
USERPOLICY_INFO_SIZE = SELECTOR.size + USERPOLICY_INFO_TAIL.size
USERPOLICY_ID_SIZE = SELECTOR.size + USERPOLICY_ID_TAIL.size
assert (SELECTOR.size, XFRM_ID.size, USERSA_INFO_SIZE, USERSA_ID.size) == (56, 24, 224, 24)
assert (USERPOLICY_INFO_SIZE, USERPOLICY_ID_SIZE, USER_TMPL.size) == (168, 64, 64)

# Byte and packet limits infinite, time limits none: what `ip xfrm` and Cilium's netlink library send.
NO_LIMITS = (XFRM_INF, XFRM_INF, XFRM_INF, XFRM_INF, 0, 0, 0, 0)


def need(buffer: memoryview, size: int, what: str) -> None:
    if len(buffer) < size:
        raise XfrmDecodeError(f"{what}: {len(buffer)} bytes, {size} needed")


def pack_address(address: Address) -> bytes:
    return address.packed.ljust(16, b"\0")


def unpack_address(raw: bytes, family: int, what: str) -> Address:
    if family == AF_INET:
        return IPv4Address(raw[:4])
    if family == AF_INET6:
        return IPv6Address(raw[:16])
    raise XfrmDecodeError(f"{what}: address family {family} is neither IPv4 nor IPv6")


def pack_spi(spi: int) -> bytes:
    return spi.to_bytes(4, "big")


def pack_selector(selector: Selector | None) -> bytes:
    """xfrm_selector; None is all zero (family AF_UNSPEC)."""
    if selector is None:
        return bytes(SELECTOR.size)
    s = selector
    return SELECTOR.pack(
        pack_address(s.dst.ip),
        pack_address(s.src.ip),
        *(port.to_bytes(2, "big") for port in (s.dport, s.dport_mask, s.sport, s.sport_mask)),
        s.family,
        s.dst.network.prefixlen,
        s.src.network.prefixlen,
        s.proto,
        s.ifindex,
        s.user,
    )


def _prefix(raw: bytes, length: int, family: int, what: str) -> Prefix:
    limit = 32 if family == AF_INET else 128
    if length > limit:
        raise XfrmDecodeError(f"{what}: prefix length {length} for an address of {limit} bits")
    if family == AF_INET:
        return IPv4Interface((raw[:4], length))
    return IPv6Interface((raw[:16], length))


def unpack_selector(buffer: memoryview, what: str) -> Selector | None:
    """The xfrm_selector at the start of `buffer`; all zero with AF_UNSPEC is None."""
    need(buffer, SELECTOR.size, what)
    daddr, saddr, *raw_ports, family, plen_d, plen_s, proto, ifindex, user = SELECTOR.unpack_from(buffer)
    dport, dport_mask, sport, sport_mask = (int.from_bytes(port, "big") for port in raw_ports)
    if family == AF_UNSPEC:
        if bytes(buffer[: SELECTOR.size]) != bytes(SELECTOR.size):
            raise XfrmDecodeError(f"{what}: a selector of family AF_UNSPEC that is not all zero")
        return None
    if family not in (AF_INET, AF_INET6):
        raise XfrmDecodeError(f"{what}: selector family {family} is neither IPv4 nor IPv6")
    return Selector(
        src=_prefix(saddr, plen_s, family, what),
        dst=_prefix(daddr, plen_d, family, what),
        proto=proto,
        sport=sport,
        sport_mask=sport_mask,
        dport=dport,
        dport_mask=dport_mask,
        ifindex=ifindex,
        user=user,
    )


def pack_template(template: Template) -> bytes:
    t = template
    return USER_TMPL.pack(
        pack_address(t.dst),
        pack_spi(t.spi),
        t.proto,
        t.family,
        pack_address(t.src),
        t.reqid,
        t.mode,
        t.share,
        int(t.optional),
        t.aalgos,
        t.ealgos,
        t.calgos,
    )


def unpack_templates(payload: memoryview, what: str) -> tuple[Template, ...]:
    """The array of xfrm_user_tmpl one XFRMA_TMPL attribute holds."""
    if len(payload) % USER_TMPL.size:
        raise XfrmDecodeError(f"{what}: {len(payload)} bytes, not a multiple of {USER_TMPL.size}")
    templates = []
    for offset in range(0, len(payload), USER_TMPL.size):
        daddr, spi, proto, family, saddr, reqid, mode, share, optional, aalgos, ealgos, calgos = (
            USER_TMPL.unpack_from(payload, offset)
        )
        templates.append(
            Template(
                src=unpack_address(saddr, family, what),
                dst=unpack_address(daddr, family, what),
                proto=proto,
                spi=int.from_bytes(spi, "big"),
                reqid=reqid,
                mode=mode,
                share=share,
                optional=bool(optional),
                aalgos=aalgos,
                ealgos=ealgos,
                calgos=calgos,
            )
        )
    return tuple(templates)


def pack_mark(mark: Mark) -> bytes:
    return MARK.pack(mark.value, mark.mask)


def unpack_mark(payload: memoryview, what: str) -> Mark:
    need(payload, MARK.size, what)
    value, mask = MARK.unpack_from(payload)
    return Mark(value, mask)


def algorithm_name(raw: bytes, what: str) -> str:
    name, _, _ = raw.partition(b"\0")
    try:
        return name.decode("ascii")
    except UnicodeDecodeError:
        raise XfrmDecodeError(f"{what}: the algorithm name is not ASCII") from None


def pack_algorithm_name(name: str) -> bytes:
    raw = name.encode("ascii")
    if len(raw) >= 64:
        raise ValueError(f"algorithm name {name!r} is longer than the kernel's 63 characters")
    return raw


@dataclass(frozen=True)
class AddressFilter:
    """Which states a dump returns (xfrm_address_filter); all zero, as `ip xfrm state list` sends, is all."""

    src: Address = NO_ADDRESS
    dst: Address = NO_ADDRESS
    family: int = AF_UNSPEC
    src_len: int = 0
    dst_len: int = 0

    def pack(self) -> bytes:
        return ADDRESS_FILTER.pack(
            pack_address(self.src), pack_address(self.dst), self.family, self.src_len, self.dst_len
        )
