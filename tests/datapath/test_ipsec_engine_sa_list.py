"""The engine lists the SAs it holds (as `encryption sa list` shows them), keys only when revealed."""

from __future__ import annotations

from ciphermesh.datapath.desired import IPsecEngineState
from ciphermesh.datapath.userspace.ipsec.sa_list import held_sas
from ciphermesh.keys import generate_line, parse_line
from tests.datapath.test_ipsec_engine_tables import CIDR_B, ROUTER_A, ROUTER_B, peer, tables_for, tunnel_key


def test_a_key_in_its_grace_period_is_listed() -> None:
    old, new = generate_line(key_id=3), generate_line(key_id=4)
    # Mid-rotation: inbound SAs for both keys, sending with the old one (the peer has not moved yet).
    tables = tables_for(IPsecEngineState(ROUTER_A, (peer(ROUTER_A, ROUTER_B, (CIDR_B,), old, new, out=old),)))
    plain = held_sas(tables, reveal=False)
    assert [(sa["direction"], sa["src"], sa["dst"], sa["spi"]) for sa in plain] == [
        ("out", str(ROUTER_A), str(ROUTER_B), 3),
        ("in", str(ROUTER_B), str(ROUTER_A), 3),
        ("in", str(ROUTER_B), str(ROUTER_A), 4),
    ]
    assert all("<redacted>" in sa["key"] for sa in plain)
    revealed = held_sas(tables, reveal=True)
    assert parse_line(revealed[2]["key"]) == tunnel_key(new, ROUTER_B, ROUTER_A)
