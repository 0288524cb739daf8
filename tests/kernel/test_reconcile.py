"""From the kernel's objects to the layout: adds before removals, the drop policy first, only ours touched."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest

from ciphermesh.datapath.desired import IPsecEngineState, IPsecPeer
from ciphermesh.datapath.kernel.ipsec.layout import DROP_POLICY, plan_layout
from ciphermesh.datapath.kernel.ipsec.node_ids import NodeIDs
from ciphermesh.datapath.kernel.ipsec.reconcile import departed_states, plan_changes
from ciphermesh.datapath.kernel.xfrm.constants import (
    XFRM_MSG_DELPOLICY,
    XFRM_MSG_DELSA,
    XFRM_MSG_NEWPOLICY,
    XFRM_MSG_NEWSA,
    XFRM_MSG_UPDSA,
    XFRM_POLICY_OUT,
)
from ciphermesh.datapath.kernel.xfrm.model import Mark, Policy, Selector, State, StateCounters, prefix
from ciphermesh.datapath.kernel.xfrm.requests import new_policy
from ciphermesh.keys import parse_line

LOCAL, B, C = IPv4Address("10.0.1.1"), IPv4Address("10.0.2.1"), IPv4Address("10.0.3.1")
D = IPv4Address("10.0.4.1")


def _peer(router: IPv4Address, cidr: str, fill: str = "a") -> IPsecPeer:
    line = parse_line(f"3+ rfc4106(gcm(aes)) {fill * 40} 128")
    return IPsecPeer(router, (IPv4Network(cidr),), 3, line, {3: line})


def _layout(*peers: IPsecPeer, ids: NodeIDs | None = None):  # type: ignore[no-untyped-def]
    return plan_layout(IPsecEngineState(LOCAL, peers), ids if ids is not None else NodeIDs())


def _as_dumped(state: State) -> State:
    """What a dump gives back: a zero selector of the state's family and counters."""
    return replace(state, selector=Selector(), counters=StateCounters(bytes=100, packets=1))


def test_from_nothing_the_drop_policy_goes_first_and_nothing_is_removed() -> None:
    plan = plan_changes(_layout(_peer(B, "10.0.2.0/24")), [], [])
    types = [request.type for request in plan.adds]
    assert types == [XFRM_MSG_NEWPOLICY, XFRM_MSG_NEWSA, XFRM_MSG_NEWSA] + [XFRM_MSG_NEWPOLICY] * 3
    assert plan.adds[0].payload == new_policy(DROP_POLICY).payload
    assert plan.removes == ()


def test_in_step_is_an_empty_plan() -> None:
    layout = _layout(_peer(B, "10.0.2.0/24"))
    dumped = [replace(p, index=8 + n) for n, p in enumerate(layout.policies)]
    plan = plan_changes(layout, [_as_dumped(s) for s in layout.states], dumped)
    assert not plan and plan.adds == plan.removes == ()


def test_an_output_mark_is_updated_and_a_new_key_under_the_same_spi_replaces_the_state() -> None:
    ids = NodeIDs()
    layout = _layout(_peer(B, "10.0.2.0/24"), ids=ids)
    inbound, outbound = layout.states
    held = [_as_dumped(replace(inbound, output_mark=Mark(0, 0xFFFFFF00))), _as_dumped(outbound)]
    plan = plan_changes(layout, held, list(layout.policies))
    assert [r.type for r in plan.adds] == [XFRM_MSG_UPDSA]
    rebooted = _layout(_peer(B, "10.0.2.0/24", fill="d"), ids=ids)
    plan = plan_changes(rebooted, [_as_dumped(s) for s in layout.states], list(layout.policies))
    assert [r.type for r in plan.adds] == [XFRM_MSG_DELSA, XFRM_MSG_NEWSA] * 2


def test_stale_objects_of_ours_go_last_and_foreign_ones_stay() -> None:
    ids = NodeIDs()
    both = _layout(_peer(B, "10.0.2.0/24"), _peer(C, "10.0.3.0/24"), ids=ids)
    foreign_policy = Policy(Selector(prefix("192.168.0.0/16"), prefix("192.168.1.0/24")), XFRM_POLICY_OUT)
    foreign_state = State(IPv4Address("192.168.0.1"), IPv4Address("192.168.1.1"), 0x4242)
    only_b = _layout(_peer(B, "10.0.2.0/24"), ids=ids)
    plan = plan_changes(only_b, [*map(_as_dumped, both.states), foreign_state],
                        [*both.policies, foreign_policy])
    assert plan.adds == ()
    assert [r.type for r in plan.removes] == [XFRM_MSG_DELPOLICY, XFRM_MSG_DELSA, XFRM_MSG_DELSA]
    assert all("10.0.3" in r.what for r in plan.removes)
    assert DROP_POLICY in only_b.policies


# What Linux 6.1 stores for a state added with XFRMA_ALG_AUTH_TRUNC length 0, as Cilium adds them
# (measured: `ip xfrm state` shows it); independent of our algorithm table on purpose.
KERNEL_DEFAULT_TRUNC = {"hmac(sha256)": 96, "hmac(sha512)": 256, "hmac(sha1)": 96}


@pytest.mark.parametrize(("auth", "auth_hex"),
                         [("hmac(sha256)", 32), ("hmac(sha512)", 64), ("hmac(sha1)", 40)])
def test_an_auth_enc_key_as_the_kernel_dumps_it_is_in_step(auth: str, auth_hex: int) -> None:
    line = parse_line(f"3+ {auth} {'ab' * (auth_hex // 2)} cbc(aes) {'cd' * 16}")
    layout = _layout(IPsecPeer(B, (IPv4Network("10.0.2.0/24"),), 3, line, {3: line}))
    dumped = []
    for state in layout.states:
        assert state.auth is not None
        kernel_auth = replace(state.auth, trunc_bits=KERNEL_DEFAULT_TRUNC[auth])
        dumped.append(_as_dumped(replace(state, auth=kernel_auth)))
    assert [s.auth.trunc_bits for s in layout.states if s.auth] == [KERNEL_DEFAULT_TRUNC[auth]] * 2
    plan = plan_changes(layout, dumped, [replace(p, index=8 + n) for n, p in enumerate(layout.policies)])
    assert not plan, [r.what for r in plan.adds + plan.removes]


def _indexed(policies: tuple[Policy, ...]) -> list[Policy]:
    """Policies as a dump gives them back: numbered by the kernel."""
    return [replace(p, index=8 + n) for n, p in enumerate(policies)]


def _departed(peers: tuple[IPsecPeer, ...], held: list[State], ids: NodeIDs, key_ids: set[int]):  # type: ignore[no-untyped-def]
    engine = IPsecEngineState(LOCAL, peers, frozenset(key_ids))
    return plan_layout(engine, ids, departed_states(engine, held, ids))


def test_a_peer_that_left_keeps_its_states_and_node_id_and_loses_its_policies_and_marks() -> None:
    ids = NodeIDs()
    b, c = _peer(B, "10.0.2.0/24"), _peer(C, "10.0.3.0/24")
    both = _departed((b, c), [], ids, {3})
    held = [_as_dumped(s) for s in both.states]
    c_id = ids.get(C)
    without_c = _departed((b,), held, ids, {3})
    plan = plan_changes(without_c, held, _indexed(both.policies))
    assert plan.adds == ()
    assert [r.type for r in plan.removes] == [XFRM_MSG_DELPOLICY] and "10.0.3" in plan.removes[0].what
    assert C not in without_c.steering.in_marks
    assert IPv4Network("10.0.3.0/24") not in without_c.steering.out_marks
    # Its node ID stays its own: a peer joining meanwhile gets another, so no two IN states share a mark.
    assert ids.get(C) == c_id
    _departed((b, _peer(D, "10.0.4.0/24")), held, ids, {3})
    assert ids.get(D) not in (ids.get(B), c_id)


def test_a_peer_that_returns_with_the_same_keys_finds_its_states_as_they_were() -> None:
    ids = NodeIDs()
    b, c = _peer(B, "10.0.2.0/24"), _peer(C, "10.0.3.0/24")
    both = _departed((b, c), [], ids, {3})
    held = [_as_dumped(s) for s in both.states]
    without_c = _departed((b,), held, ids, {3})
    # What the kernel holds once that was applied: the layout, as dumped.
    held = [_as_dumped(s) for s in without_c.states]
    back = _departed((b, c), held, ids, {3})
    assert back == both
    # Only the policy comes back: the states, and the sequence numbers they hold, are untouched.
    plan = plan_changes(back, held, _indexed(without_c.policies))
    assert [r.type for r in plan.adds] == [XFRM_MSG_NEWPOLICY] and plan.removes == ()


def test_a_departed_peer_s_states_go_once_their_key_id_rotated_out() -> None:
    ids = NodeIDs()
    both = _departed((_peer(B, "10.0.2.0/24"), _peer(C, "10.0.3.0/24")), [], ids, {3})
    held = [_as_dumped(s) for s in both.states]
    rotated = _departed((_peer(B, "10.0.2.0/24"),), held, ids, {4})
    plan = plan_changes(rotated, held, _indexed(both.policies))
    assert [r.type for r in plan.removes] == [XFRM_MSG_DELPOLICY, XFRM_MSG_DELSA, XFRM_MSG_DELSA]
    assert all("10.0.3" in r.what for r in plan.removes)
    assert ids.get(C) is None


def test_a_returning_peer_that_rebooted_replaces_its_kept_states() -> None:
    ids = NodeIDs()
    both = _departed((_peer(B, "10.0.2.0/24"), _peer(C, "10.0.3.0/24")), [], ids, {3})
    held = [_as_dumped(s) for s in both.states]
    rebooted = _departed((_peer(B, "10.0.2.0/24"), _peer(C, "10.0.3.0/24", fill="d")), held, ids, {3})
    plan = plan_changes(rebooted, held, _indexed(both.policies))
    assert [r.type for r in plan.adds] == [XFRM_MSG_DELSA, XFRM_MSG_NEWSA] * 2
    assert all("10.0.3" in r.what for r in plan.adds)


def test_a_state_whose_node_id_is_not_the_peer_s_is_not_kept() -> None:
    ids = NodeIDs()
    both = _departed((_peer(B, "10.0.2.0/24"), _peer(C, "10.0.3.0/24")), [], ids, {3})
    held = [_as_dumped(s) for s in both.states]
    stranger = NodeIDs({B: ids.get(B) or 0})
    assert departed_states(IPsecEngineState(LOCAL, (_peer(B, "10.0.2.0/24"),), frozenset({3})), held,
                           stranger) == ()
