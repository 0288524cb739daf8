"""The agent's per-node settings on Kubernetes: the CiliumNodeConfigs of its namespace that select its
Node, applied over the mounted `cilium-config` once, at start, as Cilium's agent applies them (a change
takes effect when the agent restarts: Cilium's docs say the same of its pods)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from ciphermesh.config.node_config import Resolved, apply_node_configs
from ciphermesh.store.errors import StoreError
from ciphermesh.store.kubernetes.backend import KubernetesBackend
from ciphermesh.store.kubernetes.node_configs import list_node_configs, node_labels
from ciphermesh.store.store import Store

log = logging.getLogger(__name__)
CONFIG_MAP_SOURCE = "config-map:{namespace}/cilium-config"


def resolve_node_config(store: Store, namespace: str, node: str, data: Mapping[str, str]) -> Resolved:
    """`data` with this node's CiliumNodeConfig overrides; StoreError if they cannot be read (the agent
    then does not start, as Cilium's config init container fails, and the kubelet starts it again)."""
    backend = store.backend
    if not isinstance(backend, KubernetesBackend):
        raise StoreError("CiliumNodeConfigs live in a Kubernetes API server; this store is not one")
    configs = list_node_configs(backend.api, namespace)
    labels = node_labels(backend.api, node) if configs else {}
    resolved = apply_node_configs(data, configs, labels, namespace=namespace)
    sources = (CONFIG_MAP_SOURCE.format(namespace=namespace), *resolved.sources)
    for source in resolved.sources:
        log.info("per-node settings from %s", source)
    for problem in resolved.problems:
        log.error("%s", problem)
    return Resolved(data=resolved.data, sources=sources, problems=resolved.problems)
