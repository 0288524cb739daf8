"""Scheduled key rotation (`encryption.ipsec.autoRotateInterval`, which Cilium lacks: its issue #7304)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ciphermesh.keys import KeyLine, KeyLineError
from ciphermesh.operator.key_secret import NoKeySecretError, current_key, rotate_key
from ciphermesh.store.errors import ConflictError, StoreError
from ciphermesh.store.store import Store

log = logging.getLogger(__name__)
CHECK_SECONDS = 1.0


class AutoRotator:
    """Rotates once the current key is `interval` seconds old and every node has moved onto it."""

    def __init__(
        self, store: Store, secret_name: str, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.secret_name = secret_name
        self.interval = interval
        self._clock = clock
        self._seen: int | None = None
        self._since = 0.0

    def tick(self) -> KeyLine | None:
        """Rotate if it is time; the new line, or None."""
        try:
            current = current_key(self.store, self.secret_name)
        except (NoKeySecretError, KeyLineError):
            return None
        now = self._clock()
        if current.line.key_id != self._seen:
            # A key set by hand restarts the clock, as a rotation of our own does.
            self._seen, self._since = current.line.key_id, now
            return None
        if now - self._since < self.interval:
            return None
        nodes = [versioned.value for versioned in self.store.list_nodes()]
        if any(node.key_id != current.line.key_id for node in nodes if node.agent == "ready"):
            return None
        try:
            new = rotate_key(self.store, self.secret_name)
        except ConflictError:
            return None
        self._seen, self._since = new.key_id, now
        log.info("rotated the IPsec key on schedule: new key SPI %d", new.key_id)
        return new


def run_key_rotation(rotator: AutoRotator, stop: threading.Event, check: float = CHECK_SECONDS) -> None:
    """Tick until `stop` is set; store outages are logged and retried."""
    while not stop.wait(check):
        try:
            rotator.tick()
        except StoreError as exc:
            log.warning("scheduled rotation: %s", exc)
