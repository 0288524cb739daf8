"""XFRM states, policies and their parts as typed values: what is encoded, and what a dump decodes to."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_interface

from ciphermesh.datapath.kernel.xfrm.constants import (
    AF_INET,
    AF_INET6,
    IPPROTO_ESP,
    XFRM_MODE_TUNNEL,
    XFRM_POLICY_ALLOW,
    XFRM_STATE_ESN,
)
from ciphermesh.keys.secret_bytes import SecretBytes

Address = IPv4Address | IPv6Address
# A selector side as the kernel keeps it: address and prefix length, host bits included.
Prefix = IPv4Interface | IPv6Interface

NO_ADDRESS = IPv4Address(0)
ANY4 = IPv4Interface("0.0.0.0/0")
ANY6 = IPv6Interface("::/0")


def family_of(address: Address | Prefix) -> int:
    return AF_INET if address.version == 4 else AF_INET6


def prefix(text: str) -> Prefix:
    """`"10.0.1.0/24"` (or an IPv6 prefix) as a selector side."""
    return ip_interface(text)


@dataclass(frozen=True)
class Mark:
    """A mark and its mask (xfrm_mark, or output-mark's XFRMA_SET_MARK and XFRMA_SET_MARK_MASK)."""

    value: int
    mask: int = 0xFFFFFFFF

    def __repr__(self) -> str:
        return f"Mark({self.value:#x}/{self.mask:#x})"


@dataclass(frozen=True)
class Selector:
    """What traffic a policy (or a state) matches: xfrm_selector. Ports are host integers."""

    src: Prefix = ANY4
    dst: Prefix = ANY4
    proto: int = 0
    sport: int = 0
    sport_mask: int = 0
    dport: int = 0
    dport_mask: int = 0
    ifindex: int = 0
    user: int = 0

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError(f"selector {self.src} -> {self.dst} mixes IPv4 and IPv6")

    @property
    def family(self) -> int:
        return family_of(self.dst)


@dataclass(frozen=True)
class Aead:
    """An AEAD algorithm (xfrm_algo_aead), e.g. rfc4106(gcm(aes)) with key and salt, and its ICV length."""

    name: str
    key: SecretBytes
    icv_bits: int = 128


@dataclass(frozen=True)
class Cipher:
    """An encryption algorithm without integrity (xfrm_algo, XFRMA_ALG_CRYPT), e.g. cbc(aes)."""

    name: str
    key: SecretBytes


@dataclass(frozen=True)
class AuthTrunc:
    """An integrity algorithm with its truncation length (xfrm_algo_auth, XFRMA_ALG_AUTH_TRUNC)."""

    name: str
    key: SecretBytes
    trunc_bits: int


@dataclass(frozen=True)
class StateCounters:
    """What the kernel counts for a state: current lifetime, statistics, replay sequence numbers."""

    bytes: int = 0
    packets: int = 0
    add_time: int = 0
    use_time: int = 0
    replay_window_drops: int = 0
    replay: int = 0
    integrity_failed: int = 0
    out_seq: int = 0
    in_seq: int = 0


@dataclass(frozen=True)
class State:
    """An XFRM state (SA). Equality is about configuration: `counters` (dumps only) is not compared."""

    src: Address
    dst: Address
    spi: int
    proto: int = IPPROTO_ESP
    mode: int = XFRM_MODE_TUNNEL
    reqid: int = 0
    aead: Aead | None = None
    crypt: Cipher | None = None
    auth: AuthTrunc | None = None
    flags: int = 0
    replay_window: int = 0
    mark: Mark | None = None
    output_mark: Mark | None = None
    # None: no selector (all zero, family AF_UNSPEC), which the kernel keeps as the match-all selector of
    # the state's family; so that one is held as None too, and a dumped state equals the one sent.
    selector: Selector | None = None
    counters: StateCounters | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError(f"state {self.src} -> {self.dst} mixes IPv4 and IPv6")
        if not 0 <= self.spi <= 0xFFFFFFFF:
            raise ValueError(f"SPI {self.spi} is not 32 bits")
        any_side = ANY4 if self.dst.version == 4 else ANY6
        if self.selector == Selector(any_side, any_side):
            object.__setattr__(self, "selector", None)

    @property
    def family(self) -> int:
        return family_of(self.dst)

    @property
    def esn(self) -> bool:
        return bool(self.flags & XFRM_STATE_ESN)

    @property
    def id(self) -> StateId:
        return StateId(self.src, self.dst, self.spi, self.proto, self.mark)


@dataclass(frozen=True)
class StateId:
    """What names a state for delete and get: destination, SPI, protocol, mark (and the source)."""

    src: Address
    dst: Address
    spi: int
    proto: int = IPPROTO_ESP
    mark: Mark | None = None

    @property
    def family(self) -> int:
        return family_of(self.dst)


@dataclass(frozen=True)
class Template:
    """One transformation a policy requires (xfrm_user_tmpl). Zero addresses: any (Cilium's IN/FWD)."""

    src: Address = NO_ADDRESS
    dst: Address = NO_ADDRESS
    proto: int = IPPROTO_ESP
    spi: int = 0
    reqid: int = 0
    mode: int = XFRM_MODE_TUNNEL
    share: int = 0
    optional: bool = False
    aalgos: int = 0xFFFFFFFF
    ealgos: int = 0xFFFFFFFF
    calgos: int = 0xFFFFFFFF

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError(f"template {self.src} -> {self.dst} mixes IPv4 and IPv6")

    @property
    def family(self) -> int:
        return family_of(self.dst)


@dataclass(frozen=True)
class Policy:
    """An XFRM policy: selector, direction, priority, action, mark and templates (index: the kernel's)."""

    selector: Selector
    dir: int
    priority: int = 0
    action: int = XFRM_POLICY_ALLOW
    mark: Mark | None = None
    templates: tuple[Template, ...] = ()
    index: int = 0
    flags: int = 0
    share: int = 0

    @property
    def id(self) -> PolicyId:
        return PolicyId(self.selector, self.dir, self.mark)


@dataclass(frozen=True)
class PolicyId:
    """What names a policy for delete and get: selector, direction and mark, or the kernel's index."""

    selector: Selector
    dir: int
    mark: Mark | None = None
    index: int = 0
