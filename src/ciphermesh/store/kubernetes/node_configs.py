"""CiliumNodeConfig objects (`cilium.io/v2`, namespaced) and a Node's labels, read as Cilium's option
resolver reads them at agent start: the list of a namespace (v2, else the older v2alpha1; none when the
CRD is not installed) and the node's `v1` Node."""

from __future__ import annotations

from ciphermesh.config.node_config import NodeConfig
from ciphermesh.store.errors import StoreError
from ciphermesh.store.kubernetes.client import NOT_FOUND, KubeApiError, KubeClient
from ciphermesh.store.kubernetes.objects import NODES

GROUP = "cilium.io"
VERSIONS = ("v2", "v2alpha1")
PLURAL = "ciliumnodeconfigs"
CRD_NAME = f"{PLURAL}.{GROUP}"


def node_configs_path(namespace: str, version: str = VERSIONS[0]) -> str:
    return f"/apis/{GROUP}/{version}/namespaces/{namespace}/{PLURAL}"


def list_node_configs(api: KubeClient, namespace: str) -> list[NodeConfig]:
    """The namespace's CiliumNodeConfigs; none if neither version is served (Cilium tolerates that too)."""
    for version in VERSIONS:
        try:
            items = api.request("GET", node_configs_path(namespace, version)).get("items") or []
        except KubeApiError as exc:
            if exc.code == NOT_FOUND:
                continue
            raise
        return [NodeConfig.from_object(item) for item in items]
    return []


def node_labels(api: KubeClient, node: str) -> dict[str, str]:
    """The labels of the `v1` Node `node`; StoreError if it is not there (its configs cannot be chosen)."""
    try:
        obj = api.request("GET", f"{NODES}/{node}")
    except KubeApiError as exc:
        if exc.code == NOT_FOUND:
            raise StoreError(f"Node {node} is not registered: its {PLURAL} cannot be matched") from None
        raise
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}
