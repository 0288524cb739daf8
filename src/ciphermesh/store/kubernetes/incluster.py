"""The API server as a pod sees it, as client-go's `rest.InClusterConfig`: `KUBERNETES_SERVICE_HOST`
and `_PORT`, the ServiceAccount's CA and token under /var/run/secrets/kubernetes.io/serviceaccount."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from ciphermesh.store.errors import StoreError
from ciphermesh.store.kubernetes.client import KubeConfig

SERVICEACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SERVICEACCOUNT_DIR_ENV = "CIPHERMESH_SERVICEACCOUNT_DIR"
"""Overrides `SERVICEACCOUNT_DIR` (tests; a pod has the kubelet's mount there)."""


def serviceaccount_dir() -> Path:
    return Path(os.environ.get(SERVICEACCOUNT_DIR_ENV) or SERVICEACCOUNT_DIR)


def in_cluster_config() -> KubeConfig:
    """The in-cluster `KubeConfig`; `StoreError` if this process is not in a pod (as client-go says)."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise StoreError(
            "not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set "
            "(--store=kubernetes is for a pod; elsewhere use kubernetes:///path/to/kubeconfig)"
        )
    try:
        bracketed = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        bracketed = host  # a name, as Services' environment never has but a test may
    directory = serviceaccount_dir()
    ca, token = directory / "ca.crt", directory / "token"
    for path in (ca, token):
        if not path.is_file():
            raise StoreError(f"not in a cluster: {path} is missing (no ServiceAccount token mounted)")
    return KubeConfig(server=f"https://{bracketed}:{port}", ca_file=str(ca), token_file=str(token))
