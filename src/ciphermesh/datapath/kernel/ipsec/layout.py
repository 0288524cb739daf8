"""The XFRM states and policies Cilium programs for a node's peers (reference/cilium-ipsec.md §3.2-3.3),
computed from the desired engine state: pure data, so the kernel engine only diffs and applies it.

Per peer and SPI an OUT state (local -> peer, key(local->peer), OUT mark) and an OUT policy per remote pod
CIDR; per peer and inbound SPI an IN state (peer -> local, IN mark). Once per node: the catch-all IN and FWD
policies (Cilium 1.17+) and the default-drop OUT policy, which takes every packet marked for encryption
that no specific policy takes, so a missing SA drops a packet and never sends it in plaintext.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from ciphermesh.datapath.desired import IPsecEngineState
from ciphermesh.datapath.kernel.ipsec import marks
from ciphermesh.datapath.kernel.ipsec.node_ids import NodeIDs
from ciphermesh.datapath.kernel.ipsec.steering import Steering
from ciphermesh.datapath.kernel.xfrm.constants import (
    XFRM_POLICY_BLOCK,
    XFRM_POLICY_FWD,
    XFRM_POLICY_IN,
    XFRM_POLICY_OUT,
    XFRM_STATE_ESN,
)
from ciphermesh.datapath.kernel.xfrm.model import (
    ANY4,
    Aead,
    AuthTrunc,
    Cipher,
    Mark,
    Policy,
    Selector,
    State,
    Template,
)
from ciphermesh.keys import AeadKey, KeyLine
from ciphermesh.keys.algorithms import AUTH_ALGORITHMS

REPLAY_WINDOW = 1024
CATCH_ALL = Selector(ANY4, ANY4)
# Cilium 1.17+: IN and FWD accept whatever XFRM decrypted (an optional template of reqid 0, no addresses).
ANY_TEMPLATE = Template(optional=True)
IN_POLICY = Policy(CATCH_ALL, XFRM_POLICY_IN, templates=(ANY_TEMPLATE,))
FWD_POLICY = Policy(CATCH_ALL, XFRM_POLICY_FWD, priority=marks.FWD_PRIORITY, templates=(ANY_TEMPLATE,))
DROP_POLICY = Policy(CATCH_ALL, XFRM_POLICY_OUT, priority=marks.DEFAULT_DROP_PRIORITY,
                     action=XFRM_POLICY_BLOCK, mark=marks.DROP_MARK)


@dataclass(frozen=True)
class XfrmLayout:
    """What the kernel should hold: states, policies and the steering marks that lead packets to them."""

    states: tuple[State, ...]
    policies: tuple[Policy, ...]
    steering: Steering


def _state(src: IPv4Address, dst: IPv4Address, spi: int, key: KeyLine, marks_: tuple[Mark, Mark]) -> State:
    """A Cilium state; `marks_` is (mark, output-mark)."""
    material = key.material
    mark, output_mark = marks_
    base = State(src, dst, spi, reqid=marks.REQID, flags=XFRM_STATE_ESN, replay_window=REPLAY_WINDOW,
                 mark=mark, output_mark=output_mark)
    if isinstance(material, AeadKey):
        return replace(base, aead=Aead(material.algo, material.key, material.icv_bits))
    # Cilium sends XFRMA_ALG_AUTH_TRUNC with length 0 and the kernel stores its default truncation
    # (96 for hmac(sha256)). We send that default explicitly: the kernel holds the same state as on a
    # Cilium node, and its dump equals this desired state, so reconcile changes nothing the next time.
    trunc_bits = AUTH_ALGORITHMS[material.auth_algo].icv_bits
    return replace(base, auth=AuthTrunc(material.auth_algo, material.auth_key, trunc_bits),
                   crypt=Cipher(material.enc_algo, material.enc_key))


def peer_of(state: State, local: IPv4Address) -> IPv4Address | None:
    """The other end of a state of the node with router IP `local`; None for a state not of this node."""
    other = state.src if state.dst == local else state.dst if state.src == local else None
    return other if isinstance(other, IPv4Address) else None


def plan_layout(engine: IPsecEngineState, node_ids: NodeIDs, kept: tuple[State, ...] = ()) -> XfrmLayout:
    """The layout for `engine`, holding the `kept` states of peers gone as they are (no policy, no mark).

    `node_ids` gains an ID for each new peer and forgets the ones gone, except the kept ones': their
    states carry that ID in their marks, and a peer that returns must find the same states.
    """
    local = engine.local_router_ip
    node_ids.keep_only([*(peer.router_ip for peer in engine.peers),
                        *(end for state in kept if (end := peer_of(state, local)) is not None)])
    states: list[State] = list(kept)
    policies: list[Policy] = [DROP_POLICY, IN_POLICY, FWD_POLICY]
    out_marks: dict[IPv4Network, int] = {}
    in_marks: dict[IPv4Address, int] = {}
    for peer in sorted(engine.peers, key=lambda p: int(p.router_ip)):
        node_id = node_ids.assign(peer.router_ip)
        inbound = marks.in_mark(node_id)
        in_marks[peer.router_ip] = inbound.value
        for spi, key in sorted(peer.in_keys.items()):
            states.append(_state(peer.router_ip, local, spi, key, (inbound, marks.IN_OUTPUT_MARK)))
        for spi, key in sorted(peer.out_keys.items()):
            outbound = marks.out_mark(node_id, spi)
            states.append(_state(local, peer.router_ip, spi, key, (outbound, marks.OUT_OUTPUT_MARK)))
            template = Template(local, peer.router_ip, spi=spi, reqid=marks.REQID)
            policies += [Policy(Selector(ANY4, IPv4Interface(cidr)), XFRM_POLICY_OUT, mark=outbound,
                                templates=(template,))
                         for cidr in peer.pod_cidrs if isinstance(cidr, IPv4Network)]
        if peer.out_spi is not None:
            for cidr in peer.pod_cidrs:
                if isinstance(cidr, IPv4Network):
                    out_marks[cidr] = marks.out_mark(node_id, peer.out_spi).value
    return XfrmLayout(tuple(states), tuple(policies), Steering(local, out_marks, in_marks))


def is_ours(item: State | Policy) -> bool:
    """Cilium's ownership test (§3.3 Cleanup): a Cilium mark, the FWD priority, or the catch-all IN policy."""
    if marks.is_cilium_mark(item.mark):
        return True
    # The kernel numbers each policy (`index`): a dumped IN policy is Cilium's whatever number it got.
    if not isinstance(item, Policy):
        return False
    return item.priority == marks.FWD_PRIORITY or replace(item, index=0) == IN_POLICY
