"""Open the store a daemon or the CLI is pointed at: the backend is chosen by the endpoint's scheme."""

from __future__ import annotations

from pathlib import Path

from ciphermesh.store.errors import StoreError
from ciphermesh.store.etcd.backend import EtcdBackend
from ciphermesh.store.kubernetes.backend import KubernetesBackend
from ciphermesh.store.kubernetes.client import KubeClient
from ciphermesh.store.kubernetes.incluster import in_cluster_config
from ciphermesh.store.store import Store

ETCD_SCHEMES = ("http://", "unix://")
IN_CLUSTER = "kubernetes"
KUBECONFIG_SCHEME = "kubernetes://"
ENDPOINTS_HELP = (
    "http://HOST:PORT or unix:///PATH (etcd), kubernetes (in-cluster, as a pod) "
    "or kubernetes:///PATH/TO/KUBECONFIG"
)


def open_store(endpoint: str, cluster: str, *, timeout: float = 5.0) -> Store:
    """A `Store` on the backend at `endpoint`: one of `ENDPOINTS_HELP`."""
    if endpoint.startswith(ETCD_SCHEMES):
        return Store(EtcdBackend.connect(endpoint, cluster, timeout=timeout))
    if endpoint == IN_CLUSTER:
        return Store(KubernetesBackend(KubeClient(in_cluster_config(), timeout=timeout), cluster))
    if endpoint.startswith(KUBECONFIG_SCHEME):
        path = endpoint.removeprefix(KUBECONFIG_SCHEME)
        if not path.startswith("/"):
            raise StoreError(f"store endpoint {endpoint!r}: the kubeconfig path must be absolute")
        return Store(KubernetesBackend.connect(Path(path), cluster, timeout=timeout))
    raise StoreError(f"store endpoint {endpoint!r} is not {ENDPOINTS_HELP}")
