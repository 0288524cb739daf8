"""Cilium's XFRM marks (reference/cilium-ipsec.md §3.1): the bits that bind a packet to a peer and a key.

OUT mark = node ID << 16 | (SPI & 0xF) << 12 | 0xE00 under 0xFFFFFF00; IN mark = node ID << 16 | 0xD00
under 0xFFFF0F00; both output marks keep only the magic nibble. Values are Cilium's, so a kernel that
held Cilium's states reads as ours and the other way round.
"""

from __future__ import annotations

from ciphermesh.datapath.kernel.xfrm.model import Mark

MARK_MAGIC_DECRYPT = 0x0D00
MARK_MAGIC_ENCRYPT = 0x0E00
MARK_MAGIC_MASK = 0x0F00
MARK_MASK_OUT = 0xFFFFFF00
MARK_MASK_IN = 0xFFFF0F00
OUTPUT_MARK_MASK = 0xFFFFFF00
NODE_ID_MASK = 0xFFFF0000
NODE_ID_SHIFT = 16
SPI_SHIFT = 12
MAX_KEY_SPI = 15  # the mark has four bits for the SPI: Cilium's key IDs are 1..15
MIN_NODE_ID, MAX_NODE_ID = 1, 0xFFFF
FWD_PRIORITY = 0x0B9F
DEFAULT_DROP_PRIORITY = 100
REQID = 1
ROUTE_TABLE = 200
RULE_PRIORITY = 1


def _check(node_id: int, spi: int | None = None) -> None:
    if not MIN_NODE_ID <= node_id <= MAX_NODE_ID:
        raise ValueError(f"node ID {node_id} is not in {MIN_NODE_ID}..{MAX_NODE_ID}")
    if spi is not None and not 1 <= spi <= MAX_KEY_SPI:
        raise ValueError(f"SPI {spi} is not a Cilium key ID (1..{MAX_KEY_SPI})")


def out_mark(node_id: int, spi: int) -> Mark:
    """What selects the OUT policy and state toward the peer with `node_id` under key `spi`."""
    _check(node_id, spi)
    return Mark(node_id << NODE_ID_SHIFT | spi << SPI_SHIFT | MARK_MAGIC_ENCRYPT, MARK_MASK_OUT)


def in_mark(node_id: int) -> Mark:
    """What selects the IN state for ESP from the peer with `node_id`, whatever its SPI."""
    _check(node_id)
    return Mark(node_id << NODE_ID_SHIFT | MARK_MAGIC_DECRYPT, MARK_MASK_IN)


OUT_OUTPUT_MARK = Mark(MARK_MAGIC_ENCRYPT, OUTPUT_MARK_MASK)
IN_OUTPUT_MARK = Mark(MARK_MAGIC_DECRYPT, OUTPUT_MARK_MASK)
DROP_MARK = Mark(MARK_MAGIC_ENCRYPT, MARK_MAGIC_MASK)
DECRYPT_RULE_MARK = Mark(MARK_MAGIC_DECRYPT, MARK_MAGIC_MASK)
ENCRYPT_RULE_MARK = Mark(MARK_MAGIC_ENCRYPT, MARK_MAGIC_MASK)


def node_id_of(mark: Mark) -> int | None:
    """The node ID a Cilium mark carries, or None where its mask does not cover the node ID bits."""
    if mark.mask & NODE_ID_MASK != NODE_ID_MASK:
        return None
    return (mark.value & NODE_ID_MASK) >> NODE_ID_SHIFT or None


def is_cilium_mark(mark: Mark | None) -> bool:
    """Whether an XFRM object with this mark is Cilium's (and so ours): its magic is decrypt or encrypt."""
    if mark is None or mark.mask & MARK_MAGIC_MASK != MARK_MAGIC_MASK:
        return False
    return mark.value & MARK_MAGIC_MASK in (MARK_MAGIC_DECRYPT, MARK_MAGIC_ENCRYPT)
