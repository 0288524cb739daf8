"""Node IDs: stable per peer, lowest free first, restored from the kernel's marks after a restart."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from ciphermesh.datapath.kernel.ipsec.node_ids import NodeIDs, NodeIDsExhaustedError

A, B, C, D = (IPv4Address(f"10.0.{i}.1") for i in range(1, 5))


def test_ids_are_stable_and_freed_ones_come_back_lowest_first() -> None:
    ids = NodeIDs()
    assert [ids.assign(p) for p in (A, B, C)] == [1, 2, 3]
    assert ids.assign(B) == 2
    ids.keep_only([A, C])
    assert ids.get(B) is None
    assert ids.assign(D) == 2 and ids.assign(B) == 4


def test_restored_ids_are_kept_and_skipped() -> None:
    ids = NodeIDs({A: 1, B: 3})
    assert ids.assign(C) == 2 and ids.assign(D) == 4 and ids.assign(B) == 3
    assert ids.as_dict() == {A: 1, B: 3, C: 2, D: 4}


@pytest.mark.parametrize("restored", [{A: 0}, {A: 0x10000}, {A: 5, B: 5}])
def test_bad_restored_ids_are_refused(restored: dict[IPv4Address, int]) -> None:
    with pytest.raises(ValueError, match="node ID"):
        NodeIDs(restored)


def test_the_last_id_then_a_clear_error() -> None:
    peers = [IPv4Address(0x0A000000 + i) for i in range(0xFFFF)]
    ids = NodeIDs({peer: n for n, peer in enumerate(peers, start=1)})
    with pytest.raises(NodeIDsExhaustedError, match="65535"):
        ids.assign(IPv4Address("192.0.2.1"))
    ids.keep_only(peers[1:])
    assert ids.assign(IPv4Address("192.0.2.1")) == 1
