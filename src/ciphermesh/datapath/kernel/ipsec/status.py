"""The kernel engine's status in the userspace engine's shape: SAs and per-peer counters from the kernel's
own state statistics, errors under their XFRM names from the namespace's /proc/net/xfrm_stat."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ciphermesh.datapath.desired import IPsecEngineState
from ciphermesh.datapath.kernel.ipsec.layout import is_ours
from ciphermesh.datapath.kernel.xfrm.model import State
from ciphermesh.keys import AeadKey, AuthEncKey, KeyLine, KeyLineError, SecretBytes

XFRM_STAT = Path("/proc/net/xfrm_stat")
ESN_SEQ_LIMIT = (1 << 64) - 1


def parse_xfrm_stat(text: str) -> dict[str, int]:
    """`XfrmInError   0` lines as a dict; a line that is not a name and a number is skipped."""
    counts = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def read_xfrm_stat(path: Path = XFRM_STAT) -> dict[str, int]:
    """The XFRM error counters of the caller's namespace; {} where the kernel has no XFRM statistics."""
    try:
        return parse_xfrm_stat(path.read_text())
    except OSError:
        return {}


def key_line(state: State, *, reveal: bool) -> str:
    """The state's key as a Cilium key line under its SPI; the hex only with `reveal`."""
    material: AeadKey | AuthEncKey
    if state.aead is not None:
        material = AeadKey(state.aead.name, state.aead.key, state.aead.icv_bits)
    elif state.auth is not None and state.crypt is not None:
        material = AuthEncKey(state.auth.name, state.auth.key, state.crypt.name, state.crypt.key)
    else:
        return "(no key)"
    try:
        return KeyLine(state.spi, True, material).format(reveal=reveal)
    except KeyLineError:
        return f"(SPI {state.spi} is no Cilium key ID)"


def _key_material(state: State) -> tuple[SecretBytes, ...]:
    if state.aead is not None:
        return (state.aead.key,)
    return tuple(algo.key for algo in (state.auth, state.crypt) if algo is not None)


def kernel_status(engine: IPsecEngineState | None, states: list[State], errors: dict[str, int], *,
                  reveal: bool) -> dict[str, Any]:
    """Status of what the kernel holds for `engine` (the state last applied)."""
    ours = [state for state in states if is_ours(state)]
    local = engine.local_router_ip if engine is not None else None
    peers = []
    for peer in engine.peers if engine is not None else ():
        out = [s for s in ours if s.src == local and s.dst == peer.router_ip]
        inbound = [s for s in ours if s.dst == local and s.src == peer.router_ip]
        active = next((s for s in out if s.spi == peer.out_spi), None)
        peers.append({
            "routerIP": str(peer.router_ip), "podCIDRs": [str(cidr) for cidr in peer.pod_cidrs],
            "outSPI": peer.out_spi,
            "outSeq": active.counters.out_seq if active is not None and active.counters else None,
            "inSPIs": sorted(s.spi for s in inbound),
            "packetsOut": sum(s.counters.packets for s in out if s.counters),
            "bytesOut": sum(s.counters.bytes for s in out if s.counters),
            "packetsIn": sum(s.counters.packets for s in inbound if s.counters),
            "bytesIn": sum(s.counters.bytes for s in inbound if s.counters),
        })
    # A departed peer's states are kept (reconcile.departed_states) but carry nothing: not active.
    present = {p["routerIP"] for p in peers}
    active_out = {(p["routerIP"], p["outSPI"]) for p in peers}
    sas = [{"direction": "in" if s.dst == local else "out", "src": str(s.src), "dst": str(s.dst),
            "spi": s.spi,
            "active": str(s.src) in present if s.dst == local else (str(s.dst), s.spi) in active_out,
            "key": key_line(s, reveal=reveal)} for s in ours]
    shown = {name: value for name, value in sorted(errors.items()) if value}
    return {
        "localRouterIP": str(local) if local is not None else None,
        # Cilium counts the distinct keys of its XFRM states (per-tunnel keys: one per state), as the
        # userspace engine does: `IPsec keys in use: 4` on each node of a 3-node cluster.
        "keysInUse": len({_key_material(s) for s in ours}),
        "maxSeq": max((s.counters.out_seq for s in ours if s.src == local and s.counters), default=0),
        "seqLimit": ESN_SEQ_LIMIT,
        "errorCount": sum(shown.values()),
        "errors": shown,
        "peers": peers,
        "counters": {"txBytes": sum(p["bytesOut"] for p in peers),
                     "rxBytes": sum(p["bytesIn"] for p in peers)},
        "sas": sas,
    }
