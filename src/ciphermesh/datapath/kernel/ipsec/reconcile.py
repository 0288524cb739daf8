"""From what the kernel holds to the layout: the netlink requests, in an order that never opens a gap.

Adds come first and removals last, with the steering switched between them by the engine: a new SA is in
place before a packet is marked for it, and an old one goes only once nothing is marked for it. Only
objects Cilium's ownership test calls ours are ever changed or removed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ciphermesh.datapath.desired import IPsecEngineState
from ciphermesh.datapath.kernel.ipsec.layout import DROP_POLICY, XfrmLayout, is_ours, peer_of
from ciphermesh.datapath.kernel.ipsec.marks import node_id_of
from ciphermesh.datapath.kernel.ipsec.node_ids import NodeIDs
from ciphermesh.datapath.kernel.xfrm.model import Policy, PolicyId, State, StateId
from ciphermesh.datapath.kernel.xfrm.requests import (
    Request,
    delete_policy,
    delete_state,
    new_policy,
    new_state,
)


@dataclass(frozen=True)
class XfrmPlan:
    """Requests before the steering moves (`adds`) and after it (`removes`); empty when in step."""

    adds: tuple[Request, ...]
    removes: tuple[Request, ...]

    def __bool__(self) -> bool:
        return bool(self.adds or self.removes)


def _settings(state: State) -> State:
    """A state as configured: what the kernel reports beside it (selector, counters) set aside."""
    return replace(state, selector=None, counters=None)


def departed_states(engine: IPsecEngineState, states: list[State], node_ids: NodeIDs) -> tuple[State, ...]:
    """The kernel's states of peers no longer in `engine` that stay: their SPI is one of the node's keys.

    A peer that left (its lease lapsed, its agent dead) and returns with the same boot ID gets the same
    per-tunnel keys: new states would start its sequence numbers at 1 under a key already used, which
    repeats (key, IV) pairs and makes the far side's kept replay window drop the packets. Kept, their
    counters carry on. They go when their SPI rotates out; a peer that rebooted replaces them (new key).
    A state whose mark does not carry the peer's known node ID goes: its ID could be handed out again.
    """
    local, present = engine.local_router_ip, {peer.router_ip for peer in engine.peers}
    kept = []
    for state in states:
        peer = peer_of(state, local)
        if (peer is None or peer in present or state.spi not in engine.key_ids or not is_ours(state)
                or state.mark is None or node_id_of(state.mark) != node_ids.get(peer)):
            continue
        kept.append(_settings(state))
    return tuple(kept)


def _policy_settings(policy: Policy) -> Policy:
    return replace(policy, index=0)


def _policy_change(policy: Policy, held: Policy | None) -> list[Request]:
    if held is None:
        return [new_policy(policy)]
    return [] if held == policy else [new_policy(policy, update=True)]


def _state_change(state: State, held: State | None) -> list[Request]:
    if held is None:
        return [new_state(state)]
    if held == state:
        return []
    if replace(held, output_mark=state.output_mark) == state:
        return [new_state(state, update=True)]
    # Same SPI, another key: the peer rebooted (new boot ID). An update cannot change a key.
    return [delete_state(held.id), new_state(state)]


def plan_changes(layout: XfrmLayout, states: list[State], policies: list[Policy]) -> XfrmPlan:
    """The requests that take the kernel's `states` and `policies` to `layout`."""
    held_states: dict[StateId, State] = {s.id: _settings(s) for s in states if is_ours(s)}
    held_policies: dict[PolicyId, Policy] = {p.id: _policy_settings(p) for p in policies if is_ours(p)}
    # The default drop goes in before any other XFRM object, as Cilium installs it; then states, then the
    # policies that send packets to them.
    others = [p for p in layout.policies if p != DROP_POLICY]
    adds = [*_policy_change(DROP_POLICY, held_policies.get(DROP_POLICY.id)),
            *(r for state in layout.states for r in _state_change(state, held_states.get(state.id))),
            *(r for policy in others for r in _policy_change(policy, held_policies.get(policy.id)))]
    wanted_policies = {p.id for p in layout.policies}
    wanted_states = {s.id for s in layout.states}
    removes = [*(delete_policy(pid) for pid in held_policies if pid not in wanted_policies),
               *(delete_state(sid) for sid in held_states if sid not in wanted_states)]
    return XfrmPlan(tuple(adds), tuple(removes))
