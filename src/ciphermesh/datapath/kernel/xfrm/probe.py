"""Can this kernel hold an ESP state? Add a throwaway one and delete it, as the kernel engine's start does."""

from __future__ import annotations

import errno
import secrets
from dataclasses import dataclass
from ipaddress import IPv4Address

from ciphermesh.datapath.kernel.xfrm.decode import errno_name
from ciphermesh.datapath.kernel.xfrm.model import Aead, Mark, State
from ciphermesh.datapath.kernel.xfrm.netlink_socket import XfrmRequestError, XfrmSocket
from ciphermesh.datapath.kernel.xfrm.requests import delete_state, new_state
from ciphermesh.keys.secret_bytes import SecretBytes

# What a failed add says when the kernel has no ESP (ENOSYS: no such algorithm or no esp4 type) or no
# XFRM netlink at all (EPROTONOSUPPORT, from socket() without xfrm_user).
NO_ESP = frozenset({errno.ENOSYS, errno.EPROTONOSUPPORT})
# Documentation addresses (RFC 5737), an SPI and a mark no Cilium state uses (its marks end in 0x?d00/0x?e00).
PROBE_SRC = IPv4Address("198.51.100.1")
PROBE_DST = IPv4Address("198.51.100.2")
PROBE_SPI = 0xC1F30BE0
PROBE_MARK = Mark(0xC1F30001)


@dataclass(frozen=True)
class EspProbe:
    """The probe's answer; `reason` says why, `errno` is the refusal's (None when ESP works)."""

    available: bool
    reason: str
    errno: int | None = None


def probe_state(algorithm: str = "rfc4106(gcm(aes))", key_bytes: int = 20) -> State:
    return State(
        src=PROBE_SRC,
        dst=PROBE_DST,
        spi=PROBE_SPI,
        aead=Aead(algorithm, SecretBytes(secrets.token_bytes(key_bytes)), 128),
        mark=PROBE_MARK,
    )


def probe_kernel_esp(algorithm: str = "rfc4106(gcm(aes))", key_bytes: int = 20) -> EspProbe:
    """Add an ESP state with `algorithm` and delete it, in the current namespace; other errors raise."""
    try:
        sock = XfrmSocket()
    except OSError as exc:
        if exc.errno in NO_ESP:
            return EspProbe(False, f"no XFRM netlink socket: {errno_name(exc.errno)}", exc.errno)
        raise
    state = probe_state(algorithm, key_bytes)
    with sock:
        outcome = sock.execute([new_state(state)])[0]
        if outcome.errno == errno.EEXIST:
            # Left by a probe that died between add and delete.
            sock.execute([delete_state(state.id)])
            outcome = sock.execute([new_state(state)])[0]
        if outcome.errno in NO_ESP:
            said = f" ({outcome.reason})" if outcome.reason else ""
            return EspProbe(
                False,
                f"no kernel ESP: an ESP state add failed with {errno_name(outcome.errno)}{said}",
                outcome.errno,
            )
        if not outcome.ok:
            raise XfrmRequestError(outcome)
        sock.apply([delete_state(state.id)])
    return EspProbe(True, f"kernel ESP works: an ESP state with {algorithm} was added and deleted")
