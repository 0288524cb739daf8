"""Per-node settings in the lab: `lab up --node-set NODE:KEY=VALUE`, e.g. one node on the userspace engine.

The etcd lab writes the node's merged values next to its state (`nodes/<node>/values.yaml`, 0600) and
starts its agent with that file instead of the lab's; on Kubernetes they are CiliumNodeConfigs, as
Cilium has them (`lab.kube.node_configs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from ciphermesh.config import Values
from ciphermesh.config.node_config import PER_NODE_SETTINGS
from ciphermesh.lab.info import LabError
from ciphermesh.lab.state import LabPaths, write_private

NODE_VALUES = "values.yaml"


def parse_node_sets(items: Iterable[str], nodes: Iterable[str]) -> dict[str, list[str]]:
    """`NODE:KEY=VALUE` items grouped by node, for the lab's nodes and per-node keys only."""
    known = tuple(nodes)
    grouped: dict[str, list[str]] = {}
    for item in items:
        node, colon, assignment = item.partition(":")
        key, equals, _ = assignment.partition("=")
        if not colon or not equals or not key:
            raise LabError(f"--node-set {item!r}: write NODE:KEY=VALUE, "
                           "e.g. node-3:encryption.engine=userspace")
        if node not in known:
            raise LabError(f"--node-set {item!r}: the lab has no node {node} ({', '.join(known)})")
        if key not in PER_NODE_SETTINGS:
            raise LabError(f"--node-set {item!r}: {key} is set for the whole cluster; per node only "
                           f"{', '.join(sorted(PER_NODE_SETTINGS))}")
        grouped.setdefault(node, []).append(assignment)
    return grouped


def write_node_values(paths: LabPaths, values: Values, node_sets: Mapping[str, list[str]],
                      nodes: Iterable[str]) -> None:
    """Each overridden node's values file; a node without overrides loses an earlier one."""
    for node in nodes:
        path = paths.node_dir(node) / NODE_VALUES
        if node not in node_sets:
            path.unlink(missing_ok=True)
            continue
        merged = values
        for assignment in node_sets[node]:
            # One value, not `--set`'s comma list, which would smuggle in a cluster-wide key.
            key, _, raw = assignment.partition("=")
            merged = merged.with_value(key, raw)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, yaml.safe_dump(merged.as_tree(), sort_keys=False))


def node_values_file(paths: LabPaths, node: str) -> Path | None:
    """The node's own values file, if `--node-set` gave it one."""
    path = paths.node_dir(node) / NODE_VALUES
    return path if path.exists() else None
