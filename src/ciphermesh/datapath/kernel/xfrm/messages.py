"""What a receive buffer holds: netlink headers and the typed messages decoded from them."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ciphermesh.datapath.kernel.xfrm.model import Policy, State

NLMSG_HEADER = struct.Struct("=IHHII")


@dataclass(frozen=True)
class Header:
    """struct nlmsghdr."""

    length: int
    type: int
    flags: int
    seq: int
    pid: int


@dataclass(frozen=True)
class StateMessage:
    """NEWSA or UPDSA: a state, from a dump, a get or a notification."""

    header: Header
    state: State


@dataclass(frozen=True)
class PolicyMessage:
    """NEWPOLICY or UPDPOLICY: a policy, from a dump, a get or a notification."""

    header: Header
    policy: Policy


@dataclass(frozen=True)
class ErrorMessage:
    """NLMSG_ERROR: errno 0 is the ack of the request whose header it echoes; `reason` is the extended ack."""

    header: Header
    errno: int
    request: Header
    reason: str | None = None

    @property
    def ack(self) -> bool:
        return self.errno == 0


@dataclass(frozen=True)
class DoneMessage:
    """NLMSG_DONE: the end of a dump; a non-zero errno says the dump failed."""

    header: Header
    errno: int = 0


@dataclass(frozen=True)
class OtherMessage:
    """Any other message (notifications, NOOP); repr shows the payload's length, never its bytes."""

    header: Header
    payload: bytes

    def __repr__(self) -> str:
        return f"OtherMessage({self.header}, {len(self.payload)} bytes)"


Message = StateMessage | PolicyMessage | ErrorMessage | DoneMessage | OtherMessage
