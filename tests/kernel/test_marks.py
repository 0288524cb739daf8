"""Cilium's XFRM marks: the documented example decodes, and every (node ID, SPI) maps to a distinct mark."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ciphermesh.datapath.kernel.ipsec.marks import (
    DROP_MARK,
    IN_OUTPUT_MARK,
    OUT_OUTPUT_MARK,
    in_mark,
    is_cilium_mark,
    node_id_of,
    out_mark,
)
from ciphermesh.datapath.kernel.xfrm.model import Mark

node_ids = st.integers(1, 0xFFFF)


def mark_matches(mark: Mark, packet_mark: int) -> bool:
    """As XFRM selects: the packet's mark under the object's mask is its value."""
    return packet_mark & mark.mask == mark.value
spis = st.integers(1, 15)


def test_the_documented_out_mark() -> None:
    # Cilium's docs render node ID 0x0cb9 under key 3 as mark 0xcb93e00/0xffffff00.
    assert repr(out_mark(0x0CB9, 3)) == "Mark(0xcb93e00/0xffffff00)"
    assert repr(in_mark(0x0CB9)) == "Mark(0xcb90d00/0xffff0f00)"
    assert Mark(0xE00, 0xFFFFFF00) == OUT_OUTPUT_MARK and Mark(0xD00, 0xFFFFFF00) == IN_OUTPUT_MARK


@given(node_ids, spis, node_ids, spis)
def test_out_marks_tell_peers_and_keys_apart(a: int, spi_a: int, b: int, spi_b: int) -> None:
    assert (out_mark(a, spi_a) == out_mark(b, spi_b)) == ((a, spi_a) == (b, spi_b))
    assert node_id_of(out_mark(a, spi_a)) == a and node_id_of(in_mark(b)) == b


@given(node_ids, spis)
def test_a_packet_marked_for_a_key_meets_its_policy_and_the_drop_policy(node_id: int, spi: int) -> None:
    mark = out_mark(node_id, spi)
    assert mark_matches(mark, mark.value) and mark_matches(DROP_MARK, mark.value)
    # The IN mark ignores the SPI nibble: one IN state per SPI is found by its SPI, not its mark.
    assert mark_matches(in_mark(node_id), in_mark(node_id).value | spi << 12)
    assert not mark_matches(in_mark(node_id), mark.value)


def test_ownership_follows_the_magic_nibble() -> None:
    assert is_cilium_mark(out_mark(7, 1)) and is_cilium_mark(in_mark(7)) and is_cilium_mark(DROP_MARK)
    assert not is_cilium_mark(None)
    assert not is_cilium_mark(Mark(0x200, 0xF00))  # Cilium's old proxy mark is not an encryption object
    assert not is_cilium_mark(Mark(0xE00, 0xE00))  # a mask that does not cover the nibble decides nothing
    assert node_id_of(DROP_MARK) is None


@pytest.mark.parametrize(("node_id", "spi"), [(0, 1), (0x10000, 1), (1, 0), (1, 16)])
def test_out_of_range_values_are_refused(node_id: int, spi: int) -> None:
    with pytest.raises(ValueError, match=r"node ID|SPI"):
        out_mark(node_id, spi)

