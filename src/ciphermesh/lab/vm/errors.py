"""The harness's errors: the VM cannot start here (tests skip with the reason), or a run went wrong."""

from __future__ import annotations


class VmError(RuntimeError):
    """A VM run failed after the guest booted (it timed out, or the guest could not be prepared)."""


class VmUnavailableError(VmError):
    """QEMU cannot start a guest on this machine; the message says what is missing or what failed."""
