"""CiliumNodeConfig as Cilium's option resolver applies it: LabelSelector semantics, name order (later
wins), and keys a node may not override dropped with a problem naming them, the cluster's value kept."""

from __future__ import annotations

from typing import Any

import pytest

from ciphermesh.config.agent_config import values_from_config_data
from ciphermesh.config.node_config import (
    NodeConfig,
    SelectorError,
    apply_node_configs,
    config_key_of,
    matching,
    selector_matches,
)

NODE_2 = {"kubernetes.io/hostname": "node-2", "zone": "a", "gpu": "yes"}
CLUSTER = {"enable-ipsec": "true", "enable-wireguard": "false", "encryption-engine": "auto",
           "encrypt-node": "false"}


def _expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": key, "operator": operator, **({"values": list(values)} if values
                                                                       else {})}]}


@pytest.mark.parametrize(("selector", "expected"), [
    (None, False),  # not supplied: no node
    ({}, True),  # empty: every node
    ({"matchLabels": {"kubernetes.io/hostname": "node-2"}}, True),
    ({"matchLabels": {"kubernetes.io/hostname": "node-2", "zone": "b"}}, False),  # ANDed
    ({"matchLabels": {"missing": ""}}, False),
    (_expr("zone", "In", "a", "b"), True),
    (_expr("zone", "In", "b"), False),
    (_expr("missing", "In", "a"), False),
    (_expr("zone", "NotIn", "b"), True),
    (_expr("zone", "NotIn", "a"), False),
    (_expr("missing", "NotIn", "a"), True),  # as Kubernetes: no label is not in the set
    (_expr("gpu", "Exists"), True),
    (_expr("missing", "Exists"), False),
    (_expr("missing", "DoesNotExist"), True),
    (_expr("gpu", "DoesNotExist"), False),
    ({"matchLabels": {"zone": "a"}, **_expr("gpu", "In", "yes")}, True),
    ({"matchLabels": {"zone": "a"}, **_expr("gpu", "In", "no")}, False),
])
def test_label_selectors_match_as_kubernetes_does(selector: dict[str, Any] | None, expected: bool) -> None:
    assert selector_matches(selector, NODE_2) is expected


@pytest.mark.parametrize(("selector", "reason"), [
    (_expr("zone", "Near", "a"), "not one of"),
    (_expr("zone", "In"), "needs values"),
    (_expr("zone", "NotIn"), "needs values"),
    (_expr("zone", "Exists", "a"), "takes no values"),
    (_expr("zone", "DoesNotExist", "a"), "takes no values"),
    ({"matchExpressions": [{"operator": "Exists"}]}, "no key"),
    # Refused although the first requirement already fails: a malformed selector is never silent.
    ({"matchLabels": {"zone": "b"}, **_expr("zone", "Near", "a")}, "not one of"),
    ({"matchLabels": ["zone"]}, "must be an object"),
])
def test_malformed_selectors_are_refused(selector: dict[str, Any], reason: str) -> None:
    with pytest.raises(SelectorError, match=reason):
        selector_matches(selector, NODE_2)


def _config(name: str, selector: dict[str, Any] | None, **defaults: str) -> NodeConfig:
    return NodeConfig(name=name, node_selector=selector, defaults=defaults)


def test_matching_configs_come_in_name_order_and_empty_or_malformed_ones_do_not() -> None:
    configs = [_config("b", {}, x="1"), _config("a", {"matchLabels": {"zone": "a"}}, x="2"),
               _config("c", {}), _config("d", None, x="3"), _config("e", _expr("zone", "In"), x="4"),
               _config("f", {"matchLabels": {"zone": "b"}}, x="5")]
    found, problems = matching(configs, NODE_2)
    assert [c.name for c in found] == ["a", "b"]
    assert problems == ["CiliumNodeConfig e: nodeSelector: zone: operator In needs values; "
                        "it applies to no node"]


def test_the_later_name_wins_and_the_configmap_is_the_base() -> None:
    configs = [_config("20-userspace", {}, **{"encryption-engine": "userspace"}),
               _config("10-kernel", {"matchLabels": {"zone": "a"}}, **{"encryption-engine": "kernel"})]
    resolved = apply_node_configs(CLUSTER, configs, NODE_2, namespace="kube-system")
    assert resolved.data == {**CLUSTER, "encryption-engine": "userspace"}
    assert resolved.sources == ("cilium-node-config:kube-system/10-kernel",
                                "cilium-node-config:kube-system/20-userspace")
    assert resolved.problems == ()
    assert values_from_config_data(resolved.data).text("encryption.engine") == "userspace"
    # A node outside zone a: only the empty selector selects it.
    other = apply_node_configs(CLUSTER, configs, {"zone": "b"}, namespace="kube-system")
    assert other.data["encryption-engine"] == "userspace" and len(other.sources) == 1


def test_keys_a_node_may_not_override_are_dropped_with_a_problem_naming_them() -> None:
    configs = [_config("bad", {}, **{"enable-wireguard": "true", "bpf-lb-acceleration": "native",
                                     "encryption-engine": "fast", "no/slash": "x"})]
    resolved = apply_node_configs(CLUSTER, configs, NODE_2, namespace="kube-system")
    assert resolved.data == CLUSTER  # every cluster value stays
    assert resolved.sources == ("cilium-node-config:kube-system/bad",)
    assert list(resolved.problems) == [
        "CiliumNodeConfig kube-system/bad: bpf-lb-acceleration: not a ciphermesh setting; ignored",
        "CiliumNodeConfig kube-system/bad: enable-wireguard: set for the whole cluster, not per node "
        "(per node: encryption-engine); ignored",
        "CiliumNodeConfig kube-system/bad: encryption-engine: encryption.engine: 'fast' "
        "is not one of auto, kernel, userspace; ignored",
        "CiliumNodeConfig kube-system/bad: no/slash: not a valid ConfigMap key; ignored",
    ]


def test_a_refused_value_does_not_hide_a_good_one_of_an_earlier_config() -> None:
    configs = [_config("a", {}, **{"encryption-engine": "userspace"}),
               _config("b", {}, **{"encryption-engine": "fast"})]
    resolved = apply_node_configs(CLUSTER, configs, NODE_2, namespace="ns")
    assert resolved.data["encryption-engine"] == "userspace" and len(resolved.problems) == 1


def test_objects_are_read_from_the_apis_shape() -> None:
    obj = {"metadata": {"name": "n"}, "spec": {"nodeSelector": {"matchLabels": {"a": "b"}},
                                               "defaults": {"encryption-engine": "userspace"}}}
    assert NodeConfig.from_object(obj) == _config("n", {"matchLabels": {"a": "b"}},
                                                 **{"encryption-engine": "userspace"})
    assert NodeConfig.from_object({"metadata": {"name": "m"}, "spec": {}}).node_selector is None


def test_a_per_node_setting_has_its_configmap_key() -> None:
    assert config_key_of("encryption.engine") == "encryption-engine"
