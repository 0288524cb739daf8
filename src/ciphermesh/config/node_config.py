"""CiliumNodeConfig: per-node overrides of the `cilium-config` ConfigMap, as Cilium's option resolver
(`pkg/option/resolver`) applies them: the objects whose `spec.nodeSelector` matches the node's labels,
in name order, later names overwriting earlier ones; each key a ConfigMap key. Sans-IO: objects in,
ConfigMap data and problems out."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ciphermesh.config.agent_config import CONFIG_KEYS, DIRECT_KEYS
from ciphermesh.config.values import Values, ValuesError

KIND = "CiliumNodeConfig"
# ConfigMap keys a node may hold apart from the cluster: where it encrypts, not whether or how (a node on
# another encryption type or key would cut itself off rather than mix in).
PER_NODE_CONFIG_KEYS = frozenset({"encryption-engine"})
PER_NODE_SETTINGS = frozenset(DIRECT_KEYS[key] for key in PER_NODE_CONFIG_KEYS)
# Kubernetes' IsConfigMapKey: what a ConfigMap data key (and so a `defaults` key) may be.
_CONFIG_MAP_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class SelectorError(ValueError):
    """A label selector Kubernetes' LabelSelectorAsSelector would refuse."""


def config_key_of(setting: str) -> str:
    """The ConfigMap key of a per-node setting (`encryption.engine` -> `encryption-engine`)."""
    return next(key for key in PER_NODE_CONFIG_KEYS if DIRECT_KEYS[key] == setting)


def _requirement_matches(requirement: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator = requirement.get("key"), requirement.get("operator")
    values = [str(value) for value in requirement.get("values") or []]
    if not isinstance(key, str) or not key:
        raise SelectorError("a matchExpressions entry has no key")
    if operator not in _OPERATORS:
        raise SelectorError(f"{key}: operator {operator!r} is not one of {', '.join(_OPERATORS)}")
    if operator in ("In", "NotIn") and not values:
        raise SelectorError(f"{key}: operator {operator} needs values")
    if operator in ("Exists", "DoesNotExist") and values:
        raise SelectorError(f"{key}: operator {operator} takes no values")
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        # As Kubernetes: a node without the label is not in the set, so it matches.
        return key not in labels or labels[key] not in values
    return (key in labels) == (str(operator) == "Exists")


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a LabelSelector selects `labels`: None selects nothing (Cilium: "If not supplied, then this
    config applies to no nodes"), `{}` everything; SelectorError for a malformed one."""
    if selector is None:
        return False
    if not isinstance(selector, Mapping):
        raise SelectorError("nodeSelector is not an object")
    match_labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not isinstance(match_labels, Mapping) or not isinstance(expressions, list):
        raise SelectorError("matchLabels must be an object and matchExpressions a list")
    # Every requirement is checked, so a malformed one is refused even when an earlier one fails.
    results = [labels.get(str(key)) == str(value) for key, value in match_labels.items()]
    results += [_requirement_matches(item if isinstance(item, Mapping) else {}, labels)
                for item in expressions]
    return all(results)


@dataclass(frozen=True)
class NodeConfig:
    """One CiliumNodeConfig object: its name, `spec.nodeSelector` and `spec.defaults`."""

    name: str
    node_selector: Mapping[str, Any] | None
    defaults: Mapping[str, str]

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> NodeConfig:
        spec = obj.get("spec") or {}
        defaults = spec.get("defaults") or {}
        return cls(name=str((obj.get("metadata") or {}).get("name")), node_selector=spec.get("nodeSelector"),
                   defaults={str(k): str(v) for k, v in defaults.items()} if isinstance(defaults, Mapping)
                   else {})


@dataclass(frozen=True)
class Resolved:
    """The ConfigMap data with this node's overrides applied, where each came from, and what was refused."""

    data: dict[str, str]
    sources: tuple[str, ...]
    problems: tuple[str, ...] = field(default=())


def matching(configs: Iterable[NodeConfig], labels: Mapping[str, str]) -> tuple[list[NodeConfig], list[str]]:
    """The configs that apply to a node with `labels`, in name order (Cilium's priority: the later name
    wins), and a problem per config whose selector is malformed (it applies to no node)."""
    found, problems = [], []
    for config in sorted(configs, key=lambda c: c.name):
        if not config.defaults:
            continue  # as Cilium: an empty override is no source
        try:
            if selector_matches(config.node_selector, labels):
                found.append(config)
        except SelectorError as exc:
            problems.append(f"{KIND} {config.name}: nodeSelector: {exc}; it applies to no node")
    return found, problems


def apply_node_configs(data: Mapping[str, str], configs: Iterable[NodeConfig], labels: Mapping[str, str],
                       *, namespace: str) -> Resolved:
    """`data` (the ConfigMap's) with the matching configs' defaults over it. A key that is not a ConfigMap
    key, not a ciphermesh setting, not per-node, or whose value the setting refuses, is dropped with a
    problem naming it: the node keeps the cluster's value (Cilium drops non-overridable keys the same way)."""
    found, problems = matching(configs, labels)
    merged = dict(data)
    for config in found:
        for key, value in sorted(config.defaults.items()):
            where = f"{KIND} {namespace}/{config.name}: {key}"
            refusal = _refusal(key, value)
            if refusal is not None:
                problems.append(f"{where}: {refusal}; ignored")
                continue
            merged[key] = value
    sources = tuple(f"cilium-node-config:{namespace}/{config.name}" for config in found)
    return Resolved(data=merged, sources=sources, problems=tuple(problems))


def _refusal(key: str, value: str) -> str | None:
    """Why `key: value` may not override the ConfigMap on one node, or None if it may."""
    if not _CONFIG_MAP_KEY.match(key):
        return "not a valid ConfigMap key"
    if key not in PER_NODE_CONFIG_KEYS:
        if key in CONFIG_KEYS:
            return (f"set for the whole cluster, not per node (per node: "
                    f"{', '.join(sorted(PER_NODE_CONFIG_KEYS))})")
        return "not a ciphermesh setting"
    try:
        # Per-node keys carry one setting each (PER_NODE_SETTINGS maps them), read as the ConfigMap's are.
        Values().with_value(DIRECT_KEYS[key], value.strip())
    except ValuesError as exc:
        return str(exc)
    return None
