"""The codec's one error type for bytes it cannot read."""

from __future__ import annotations


class XfrmDecodeError(ValueError):
    """A netlink buffer that is truncated or malformed; the message names where, never the bytes."""
