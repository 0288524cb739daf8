"""The kernel engine's layout: Cilium's states and policies for a node's peers, from the desired state."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from ciphermesh.datapath.desired import IPsecEngineState, IPsecPeer
from ciphermesh.datapath.kernel.ipsec.layout import (
    DROP_POLICY,
    FWD_POLICY,
    IN_POLICY,
    is_ours,
    plan_layout,
)
from ciphermesh.datapath.kernel.ipsec.marks import in_mark, out_mark
from ciphermesh.datapath.kernel.ipsec.node_ids import NodeIDs
from ciphermesh.datapath.kernel.xfrm.constants import XFRM_POLICY_OUT
from ciphermesh.datapath.kernel.xfrm.model import Mark, Policy, Selector, State
from ciphermesh.keys import KeyLine, parse_line

LOCAL, B, C = IPv4Address("10.0.1.1"), IPv4Address("10.0.2.1"), IPv4Address("10.0.3.1")
CIDR_B, CIDR_C = IPv4Network("10.0.2.0/24"), IPv4Network("10.0.3.0/24")


def key(spi: int, fill: str) -> KeyLine:
    return parse_line(f"{spi}+ rfc4106(gcm(aes)) {fill * 40} 128")


def peer(router: IPv4Address, cidr: IPv4Network, out_spi: int | None = 3, in_spis: tuple[int, ...] = (3,),
         standby: tuple[int, ...] = ()) -> IPsecPeer:
    return IPsecPeer(router, (cidr,), out_spi, key(out_spi, "a") if out_spi else None,
                     {spi: key(spi, "b") for spi in in_spis}, {spi: key(spi, "c") for spi in standby})


def test_one_peer_gets_cilium_s_states_policies_and_marks() -> None:
    ids = NodeIDs()
    layout = plan_layout(IPsecEngineState(LOCAL, (peer(B, CIDR_B),)), ids)
    node = ids.get(B)
    assert node == 1
    inbound, outbound = layout.states
    assert (inbound.src, inbound.dst, inbound.spi, inbound.reqid) == (B, LOCAL, 3, 1)
    assert (outbound.src, outbound.dst, outbound.spi) == (LOCAL, B, 3)
    assert inbound.mark == in_mark(1) and outbound.mark == out_mark(1, 3)
    assert inbound.output_mark == Mark(0xD00, 0xFFFFFF00) and outbound.output_mark == Mark(0xE00, 0xFFFFFF00)
    assert inbound.esn and outbound.esn and inbound.replay_window == outbound.replay_window == 1024
    assert inbound.aead is not None
    assert (inbound.aead.name, inbound.aead.icv_bits) == ("rfc4106(gcm(aes))", 128)
    assert layout.policies[:3] == (DROP_POLICY, IN_POLICY, FWD_POLICY)
    [out_policy] = layout.policies[3:]
    assert out_policy.dir == XFRM_POLICY_OUT and out_policy.mark == out_mark(1, 3)
    assert out_policy.selector == Selector(IPv4Interface("0.0.0.0/0"), IPv4Interface(CIDR_B))
    [template] = out_policy.templates
    assert (template.src, template.dst, template.spi, template.reqid) == (LOCAL, B, 3, 1)
    assert dict(layout.steering.out_marks) == {CIDR_B: out_mark(1, 3).value}
    assert dict(layout.steering.in_marks) == {B: in_mark(1).value}


def test_during_a_rotation_both_spis_are_held_and_the_marks_follow_the_active_one() -> None:
    ids = NodeIDs()
    layout = plan_layout(IPsecEngineState(LOCAL, (peer(B, CIDR_B, out_spi=4, in_spis=(3, 4), standby=(3,)),)),
                         ids)
    held = sorted((s.src == LOCAL, s.spi) for s in layout.states)
    assert held == [(False, 3), (False, 4), (True, 3), (True, 4)]
    assert sorted(p.mark.value for p in layout.policies[3:] if p.mark) == [out_mark(1, 3).value,
                                                                           out_mark(1, 4).value]
    assert dict(layout.steering.out_marks) == {CIDR_B: out_mark(1, 4).value}


def test_node_ids_stay_with_their_peers_and_a_peer_without_a_key_gets_no_mark() -> None:
    ids = NodeIDs()
    plan_layout(IPsecEngineState(LOCAL, (peer(B, CIDR_B), peer(C, CIDR_C))), ids)
    assert ids.as_dict() == {B: 1, C: 2}
    layout = plan_layout(IPsecEngineState(LOCAL, (peer(C, CIDR_C, out_spi=None),)), ids)
    assert ids.as_dict() == {C: 2}
    assert dict(layout.steering.out_marks) == {} and dict(layout.steering.in_marks) == {C: in_mark(2).value}
    assert all(state.dst == LOCAL for state in layout.states)


def test_ownership_is_cilium_s() -> None:
    layout = plan_layout(IPsecEngineState(LOCAL, (peer(B, CIDR_B),)), NodeIDs())
    assert all(is_ours(item) for item in (*layout.states, *layout.policies))
    assert is_ours(replace(IN_POLICY, index=8))  # as a dump gives it back, with the kernel's index
    foreign_policy = Policy(Selector(), XFRM_POLICY_OUT)
    foreign_state = State(LOCAL, B, 0x1000, mark=Mark(0x100, 0xF00))
    assert not is_ours(foreign_policy) and not is_ours(foreign_state)
