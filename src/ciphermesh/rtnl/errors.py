"""Errors of the datapath: a kernel object we need is missing or refuses what we ask."""

from __future__ import annotations


class DatapathError(RuntimeError):
    """The kernel could not be brought to the desired state; the message says which object and why."""


class DeviceMissingError(DatapathError):
    """A device the desired state routes through does not exist (yet)."""
