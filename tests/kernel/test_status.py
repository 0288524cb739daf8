"""The kernel engine's status from what the kernel holds, in the shape the userspace engine reports."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

from ciphermesh.datapath.desired import IPsecEngineState, IPsecPeer
from ciphermesh.datapath.kernel.ipsec.layout import plan_layout
from ciphermesh.datapath.kernel.ipsec.node_ids import NodeIDs
from ciphermesh.datapath.kernel.ipsec.status import kernel_status, parse_xfrm_stat
from ciphermesh.datapath.kernel.xfrm.model import State, StateCounters
from ciphermesh.keys import parse_line

LOCAL = IPv4Address("10.0.1.1")
PEERS = ((IPv4Address("10.0.2.1"), IPv4Network("10.0.2.0/24"), "a", "b"),
         (IPv4Address("10.0.3.1"), IPv4Network("10.0.3.0/24"), "c", "d"))


def _engine() -> IPsecEngineState:
    """Two peers, each direction with its own per-tunnel key, as the agent derives them."""
    return IPsecEngineState(LOCAL, tuple(
        IPsecPeer(router, (cidr,), 3, parse_line(f"3+ rfc4106(gcm(aes)) {out * 40} 128"),
                  {3: parse_line(f"3+ rfc4106(gcm(aes)) {inbound * 40} 128")}, {})
        for router, cidr, out, inbound in PEERS))


def _held(engine: IPsecEngineState) -> list[State]:
    """The states as a dump returns them: the layout's, with counters."""
    states = plan_layout(engine, NodeIDs()).states
    return [replace(state, counters=StateCounters(bytes=100 * i, packets=i, out_seq=i))
            for i, state in enumerate(states, 1)]


def test_keys_in_use_counts_distinct_keys_as_cilium_and_the_userspace_engine_do() -> None:
    engine = _engine()
    status = kernel_status(engine, _held(engine), {}, reveal=False)
    assert status["keysInUse"] == 4  # an IN and an OUT key per peer, every one distinct
    # The same key under two states (a rotation's standby, say) is one key.
    same = replace(engine, peers=tuple(replace(p, out_key=engine.peers[0].out_key) for p in engine.peers))
    assert kernel_status(same, _held(same), {}, reveal=False)["keysInUse"] == 3


def test_peers_and_sas_come_from_the_kernel_s_states_and_keys_only_with_reveal() -> None:
    engine = _engine()
    held = _held(engine)
    hidden, shown = (kernel_status(engine, held, {}, reveal=flag) for flag in (False, True))
    assert [p["routerIP"] for p in hidden["peers"]] == ["10.0.2.1", "10.0.3.1"]
    assert all(p["outSPI"] == 3 and p["inSPIs"] == [3] for p in hidden["peers"])
    assert hidden["counters"]["txBytes"] == sum(p["bytesOut"] for p in hidden["peers"]) > 0
    assert {(sa["direction"], sa["spi"]) for sa in hidden["sas"]} == {("in", 3), ("out", 3)}
    assert len(hidden["sas"]) == 4 and all(sa["active"] for sa in hidden["sas"])
    assert not any("a" * 40 in sa["key"] for sa in hidden["sas"])
    assert sum("a" * 40 in sa["key"] for sa in shown["sas"]) == 1
    assert shown["maxSeq"] == max(s.counters.out_seq for s in held if s.src == LOCAL and s.counters)


def test_the_kept_states_of_a_peer_that_left_are_listed_but_not_active() -> None:
    engine = _engine()
    held = _held(engine)
    status = kernel_status(replace(engine, peers=engine.peers[:1]), held, {}, reveal=False)
    assert [p["routerIP"] for p in status["peers"]] == ["10.0.2.1"]
    assert {(sa["direction"], sa["active"]) for sa in status["sas"] if "10.0.3.1" in (sa["src"], sa["dst"])} \
        == {("in", False), ("out", False)}
    assert all(sa["active"] for sa in status["sas"] if "10.0.2.1" in (sa["src"], sa["dst"]))


def test_xfrm_errors_keep_their_kernel_names_and_zeros_are_left_out() -> None:
    errors = parse_xfrm_stat("XfrmInError             \t0\nXfrmInNoStates          \t5\n"
                             "XfrmOutPolBlock         \t2\nnot a counter line\n")
    assert errors == {"XfrmInError": 0, "XfrmInNoStates": 5, "XfrmOutPolBlock": 2}
    status = kernel_status(_engine(), [], errors, reveal=False)
    assert status["errors"] == {"XfrmInNoStates": 5, "XfrmOutPolBlock": 2} and status["errorCount"] == 7
    assert status["keysInUse"] == 0 and status["sas"] == []
