"""The store's typed errors; every message is one line fit for a user."""

from __future__ import annotations


class StoreError(Exception):
    """A store operation failed; the message is one line fit for a user."""


class StoreUnavailableError(StoreError):
    """The store's backend cannot be reached now; retrying later may help."""


class NodeNotFoundError(StoreError):
    """The node has no record (never registered, or its lease expired)."""


class ConflictError(StoreError):
    """A write expected a revision that is no longer current."""


class InvalidSecretError(StoreError):
    """The key secret text is not valid (per `ciphermesh.keys.parse_secret`) and was not stored."""


class PodCIDRTimeoutError(StoreError):
    """The operator did not give the node a pod CIDR in time; the message says why if it is known."""


class RecordError(StoreError, ValueError):
    """A record, or one of its fields, is not valid; the message names it."""
