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


def plan_changes(layout: XfrmLayout, states: list[State], policies: list[Policy]) -> XfrmPlan:
    """The requests that take the kernel's `states` and `policies` to `layout`."""
    held_states: dict[StateId, State] = {s.id: _settings(s) for s in states if is_ours(s)}
    held_policies: dict[PolicyId, Policy] = {p.id: _policy_settings(p) for p in policies if is_ours(p)}
    adds: list[Request] = []
    removes: list[Request] = []
    wanted_policies = {p.id: p for p in layout.policies}
    # The default drop goes in before any other XFRM object, as Cilium installs it.
    if DROP_POLICY.id not in held_policies:
        adds.append(new_policy(DROP_POLICY))
    for state in layout.states:
        held = held_states.get(state.id)
        if held is None:
            adds.append(new_state(state))
        elif held != state:
            if replace(held, output_mark=state.output_mark) == state:
                adds.append(new_state(state, update=True))
            else:
                # Same SPI, another key: the peer rebooted (new boot ID). An update cannot change a key.
                adds += [delete_state(held.id), new_state(state)]
    for policy in layout.policies:
        held_policy = held_policies.get(policy.id)
        if policy == DROP_POLICY and held_policy is None:
            continue
        if held_policy is None:
            adds.append(new_policy(policy))
        elif held_policy != policy:
            adds.append(new_policy(policy, update=True))
    wanted_states = {s.id for s in layout.states}
    removes += [delete_policy(pid) for pid in held_policies if pid not in wanted_policies]
    removes += [delete_state(sid) for sid in held_states if sid not in wanted_states]
    return XfrmPlan(tuple(adds), tuple(removes))
