"""An etcd lease kept alive from a thread: how the etcd backend keeps a registration alive."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from ciphermesh.store.errors import StoreError
from ciphermesh.store.etcd.client import EtcdClient
from ciphermesh.store.etcd.messages import EtcdError, LeaseNotFoundError

log = logging.getLogger(__name__)

_RETRY_DELAY = 0.5


class LeaseKeeper:
    """Holds a lease and keeps it alive; if it is ever lost, grants a new one and calls `publish`
    again, so the records come back after a long outage. `check` runs after every keepalive."""

    def __init__(
        self,
        client: EtcdClient,
        ttl: int,
        publish: Callable[[int], None],
        lock: threading.RLock,
        what: str,
        *,
        check: Callable[[int], None] | None = None,
    ) -> None:
        self._client = client
        self._ttl = ttl
        self._publish = publish
        self._check = check
        self._lock = lock
        self._what = what
        self._stop = threading.Event()
        self.renewals = 0
        self._last_error: str | None = None
        sent = time.monotonic()
        lease = client.lease_grant(ttl)
        try:
            with lock:
                publish(lease.id)
        except Exception:
            with contextlib.suppress(EtcdError):
                client.lease_revoke(lease.id)
            raise
        self.lease_id = lease.id
        self.valid_until = sent + lease.ttl
        self._interval = max(lease.ttl / 3, 0.5)
        self._thread = threading.Thread(target=self._run, name=f"lease {what}", daemon=True)
        self._thread.start()

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def interval(self) -> float:
        """Seconds between keepalives."""
        return self._interval

    def renew(self) -> None:
        """Grant a new lease and publish under it (the old one expired)."""
        with self._lock:
            sent = time.monotonic()
            lease = self._client.lease_grant(self._ttl)
            self._publish(lease.id)
            self.lease_id = lease.id
            self.valid_until = sent + lease.ttl
            self.renewals += 1
        log.warning("%s: lease had expired; published again under a new lease", self._what)

    def _run(self) -> None:
        delay = self._interval
        while not self._stop.wait(delay):
            try:
                sent = time.monotonic()
                try:
                    ttl = self._client.lease_keepalive(self.lease_id)
                    self.valid_until = sent + ttl
                except LeaseNotFoundError:
                    self.renew()
                if self._check is not None:
                    with self._lock:
                        self._check(self.lease_id)
                self._last_error = None
                delay = self._interval
            except (EtcdError, StoreError) as exc:
                if self._last_error is None:
                    log.warning("%s: cannot keep the lease alive: %s", self._what, exc)
                self._last_error = str(exc)
                delay = min(_RETRY_DELAY, self._interval)

    def close(self, *, revoke: bool = True) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        if revoke:
            try:
                self._client.lease_revoke(self.lease_id)
            except EtcdError as exc:
                log.warning("%s: lease not revoked (it expires by itself): %s", self._what, exc)
