"""The pure cluster-pool allocator: Helm value validation, and first-free blocks that never overlap."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ciphermesh.operator.ipam import ClusterPool, IPAMConfigError


def test_defaults_match_cilium() -> None:
    pool = ClusterPool.parse(["10.0.0.0/8"], 24)
    assert pool.capacity == 65536
    assert pool.first_free([]) == (IPv4Network("10.0.0.0/24"), IPv4Network("10.0.0.0/8"))


def test_first_free_in_list_order_then_exhausted() -> None:
    pool = ClusterPool.parse(["10.0.0.0/23", "192.168.0.0/24"], 24)
    taken: list[IPv4Network] = []
    order = []
    while (free := pool.first_free(taken)) is not None:
        taken.append(free[0])
        order.append((str(free[0]), str(free[1])))
    assert order == [
        ("10.0.0.0/24", "10.0.0.0/23"),
        ("10.0.1.0/24", "10.0.0.0/23"),
        ("192.168.0.0/24", "192.168.0.0/24"),
    ]
    assert pool.exhausted_message("node-4") == (
        "IPAM: pool 10.0.0.0/23, 192.168.0.0/24 exhausted: no /24 left for node-4"
    )


def test_a_released_block_is_reused_first() -> None:
    pool = ClusterPool.parse(["10.0.0.0/22"], 24)
    blocks = [IPv4Network(f"10.0.{i}.0/24") for i in range(4)]
    assert pool.first_free(blocks) is None
    assert pool.first_free([b for b in blocks if b != blocks[1]]) == (blocks[1], IPv4Network("10.0.0.0/22"))


def test_taken_networks_of_other_sizes_block_what_they_overlap() -> None:
    pool = ClusterPool.parse(["10.0.0.0/22"], 24)
    assert pool.first_free([IPv4Network("10.0.0.128/25")]) == (IPv4Network("10.0.1.0/24"), pool.cidrs[0])
    assert pool.first_free([IPv4Network("10.0.0.0/23")]) == (IPv4Network("10.0.2.0/24"), pool.cidrs[0])
    assert pool.first_free([IPv4Network("10.0.0.0/8")]) is None
    assert pool.first_free([IPv4Network("10.1.0.0/16")])[0] == IPv4Network("10.0.0.0/24")  # type: ignore[index]


def test_entry_of_and_overlaps() -> None:
    pool = ClusterPool.parse(["10.0.0.0/16"], 24)
    assert pool.entry_of(IPv4Network("10.0.9.0/24")) == IPv4Network("10.0.0.0/16")
    assert pool.entry_of(IPv4Network("10.0.9.0/25")) is None
    assert pool.entry_of(IPv4Network("10.1.9.0/24")) is None
    assert pool.overlaps(IPv4Network("10.0.9.0/25"))
    assert not pool.overlaps(IPv4Network("10.1.0.0/24"))


@pytest.mark.parametrize(
    ("cidrs", "mask", "message"),
    [
        (
            ["10.0.0.0/23"],
            16,
            "ipam.operator.clusterPoolIPv4MaskSize 16 is smaller than the prefix of pool 10.0.0.0/23 (/23)",
        ),
        (
            ["10.0.0.0/8"],
            31,
            "ipam.operator.clusterPoolIPv4MaskSize 31 leaves no pod addresses in a block (at most 30)",
        ),
        (["10.0.0.0/8"], "24", "ipam.operator.clusterPoolIPv4MaskSize '24' is not an integer"),
        (["banana"], 24, "ipam.operator.clusterPoolIPv4PodCIDRList: 'banana' is not a CIDR"),
        (
            ["10.0.0.1/8"],
            24,
            "ipam.operator.clusterPoolIPv4PodCIDRList: 10.0.0.1/8 has host bits set "
            "(did you mean 10.0.0.0/8?)",
        ),
        (
            ["fd00::/104"],
            120,
            "ipam.operator.clusterPoolIPv4PodCIDRList: fd00::/104 is IPv6; "
            "only IPv4 pools are supported for now",
        ),
        (
            ["10.0.0.0/8", "10.1.0.0/16"],
            24,
            "ipam.operator.clusterPoolIPv4PodCIDRList: 10.0.0.0/8 and 10.1.0.0/16 overlap",
        ),
        ([], 24, "ipam.operator.clusterPoolIPv4PodCIDRList is empty"),
        (
            "10.0.0.0/8",
            24,
            "ipam.operator.clusterPoolIPv4PodCIDRList must be a list of CIDRs, not '10.0.0.0/8'",
        ),
    ],
)
def test_bad_config_is_a_clear_error(cidrs: list[str], mask: int, message: str) -> None:
    with pytest.raises(IPAMConfigError) as info:
        ClusterPool.parse(cidrs, mask)
    assert str(info.value).startswith(message)


@st.composite
def pools(draw: st.DrawFn) -> ClusterPool:
    """1..3 disjoint IPv4 entries and a mask size that fits all of them."""
    count = draw(st.integers(1, 3))
    prefixes = [draw(st.integers(16, 28)) for _ in range(count)]
    # Each entry sits in its own /8 so the entries never overlap.
    firsts = draw(st.lists(st.integers(1, 223), min_size=count, max_size=count, unique=True))
    entries = []
    for first, prefix in zip(firsts, prefixes, strict=True):
        offset = draw(st.integers(0, (1 << (prefix - 8)) - 1))
        base = (first << 24) | (offset << (32 - prefix))
        entries.append(str(IPv4Network((base, prefix))))
    mask = draw(st.integers(max(prefixes), min(30, max(prefixes) + 6)))
    return ClusterPool.parse(entries, mask)


@settings(max_examples=200, deadline=None)
@given(pool=pools(), data=st.data())
def test_allocations_never_overlap_and_stay_in_the_pool(pool: ClusterPool, data: st.DataObject) -> None:
    taken: list[IPv4Network] = []
    for _ in range(data.draw(st.integers(1, 80))):
        release = data.draw(st.booleans())
        if taken and release:
            taken.remove(data.draw(st.sampled_from(taken)))
            continue
        free = pool.first_free(taken)
        if free is None:
            assert len(taken) == pool.capacity
            continue
        block, entry = free
        assert block.prefixlen == pool.mask_size
        assert block.subnet_of(entry) and entry in pool.cidrs
        assert not any(block.overlaps(t) for t in taken)
        # First-free: no free block comes before it in list order.
        for earlier in _blocks_before(pool, block):
            assert earlier in taken
        taken.append(block)


def _blocks_before(pool: ClusterPool, block: IPv4Network) -> list[IPv4Network]:
    out: list[IPv4Network] = []
    for entry in pool.cidrs:
        for candidate in entry.subnets(new_prefix=pool.mask_size):
            if candidate == block:
                return out
            out.append(candidate)
    raise AssertionError(f"{block} is not in the pool")


@given(pool=pools())
def test_capacity_counts_every_block(pool: ClusterPool) -> None:
    expected = sum(1 for entry in pool.cidrs for _ in entry.subnets(new_prefix=pool.mask_size))
    assert pool.capacity == expected
