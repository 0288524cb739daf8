"""What the settings ask of a node's datapath: its mode, node encryption, strict mode; or a refusal."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network

from ciphermesh.config import POOL_KEY, Values
from ciphermesh.datapath.desired import Mode
from ciphermesh.datapath.face import CILIUM_VXLAN, UNDERLAY_DEVICE, StrictGuard


class UnsupportedModeError(ValueError):
    """Settings this agent cannot carry out; it refuses to start rather than forward in plaintext."""


def agent_mode(values: Values) -> Mode:
    """The datapath mode the settings ask for; UnsupportedModeError for settings it cannot carry out."""
    strict = strict_cidr(values)
    if not values.flag("encryption.enabled"):
        if strict is not None:
            # Cilium would run it and drop every packet between nodes' pods; say so instead.
            raise UnsupportedModeError(
                "encryption.strictMode.enabled=true with encryption disabled would drop all pod traffic "
                "between nodes: set encryption.enabled=true or turn strict mode off"
            )
        return "disabled"
    kind = values.text("encryption.type")
    if kind == "ipsec":
        return "ipsec"
    if kind == "wireguard":
        return "wireguard"
    raise UnsupportedModeError(
        f"encryption.type={kind}: the agent does not run this mode; "
        "refusing to start rather than send pod traffic unencrypted"
    )


def strict_cidr(values: Values) -> IPv4Network | None:
    """Strict mode's CIDR (default: the IPAM pool); None when off, UnsupportedModeError if unusable."""
    if not values.flag("encryption.strictMode.enabled"):
        return None
    given = values.text("encryption.strictMode.cidr")
    if given:
        return IPv4Network(given)
    pool = values.cidrs(POOL_KEY)
    if len(pool) != 1:
        # Cilium exits too: its strict mode guards one IPv4 CIDR.
        raise UnsupportedModeError(
            f"strict mode guards one CIDR: set encryption.strictMode.cidr ({POOL_KEY} has {len(pool)})"
        )
    return pool[0]


def node_encryption(values: Values) -> bool:
    """Whether host traffic is encrypted too: asked for, and an encryption mode on (as Cilium)."""
    return values.flag("encryption.enabled") and values.flag("encryption.nodeEncryption")


def strict_guard(
    values: Values, node_ip: IPv4Address, peer_node_ips: Iterable[IPv4Address]
) -> StrictGuard | None:
    """Strict mode's guard for this node (None when off): the node's egress devices, its node IP exempt."""
    cidr = strict_cidr(values)
    if cidr is None:
        return None
    remote_nodes: tuple[IPv4Address, ...] = ()
    if values.flag("encryption.strictMode.allowRemoteNodeIdentities"):
        remote_nodes = tuple(sorted(set(peer_node_ips)))
    # The node IP is exempt as in Cilium; the router IP is not: whatever it sends to pods goes through
    # the engine here, so in clear it would be a leak.
    return StrictGuard(cidr, (UNDERLAY_DEVICE, CILIUM_VXLAN), exempt_sources=(node_ip,),
                       exempt_destinations=remote_nodes)
