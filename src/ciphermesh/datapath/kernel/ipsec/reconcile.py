"""From what the kernel holds to the layout: the netlink requests, in an order that never opens a gap.

Adds come first and removals last, with the steering switched between them by the engine: a new SA is in
place before a packet is marked for it, and an old one goes only once nothing is marked for it. Only
objects Cilium's ownership test calls ours are ever changed or removed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ciphermesh.datapath.kernel.ipsec.layout import DROP_POLICY, XfrmLayout, is_ours
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
