"""Open the store a daemon or the CLI is pointed at: the backend is chosen by the endpoint's scheme."""

from __future__ import annotations

from ciphermesh.store.errors import StoreError
from ciphermesh.store.etcd.backend import EtcdBackend
from ciphermesh.store.store import Store

ETCD_SCHEMES = ("http://", "unix://")


def open_store(endpoint: str, cluster: str, *, timeout: float = 5.0) -> Store:
    """A `Store` on the backend at `endpoint` (etcd: `http://HOST:PORT` or `unix:///PATH`)."""
    if endpoint.startswith(ETCD_SCHEMES):
        return Store(EtcdBackend.connect(endpoint, cluster, timeout=timeout))
    raise StoreError(f"store endpoint {endpoint!r} is not http://HOST:PORT or unix:///PATH (etcd)")
