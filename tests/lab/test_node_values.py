"""`lab up --node-set NODE:KEY=VALUE`: parsed strictly, written as the node's own merged values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ciphermesh.config import load_values
from ciphermesh.config.node_config import selector_matches
from ciphermesh.lab.info import LabError
from ciphermesh.lab.kube.node_configs import node_config_object
from ciphermesh.lab.node_values import node_values_file, parse_node_sets, write_node_values
from ciphermesh.lab.state import LabPaths

NODES = ("node-1", "node-2", "node-3")


def test_node_sets_group_by_node() -> None:
    assert parse_node_sets(["node-3:encryption.engine=userspace", "node-1:encryption.engine=kernel"],
                           NODES) == {"node-3": ["encryption.engine=userspace"],
                                      "node-1": ["encryption.engine=kernel"]}


@pytest.mark.parametrize(("item", "reason"), [
    ("node-3", "NODE:KEY=VALUE"),
    ("node-3:encryption.engine", "NODE:KEY=VALUE"),
    ("node-9:encryption.engine=userspace", "no node node-9"),
    ("node-1:encryption.type=wireguard", "whole cluster"),
])
def test_bad_node_sets_are_refused(item: str, reason: str) -> None:
    with pytest.raises(LabError, match=reason):
        parse_node_sets([item], NODES)


def test_an_overridden_node_gets_its_own_file_and_loses_it_later(tmp_path: Path) -> None:
    paths = LabPaths("nv", tmp_path)
    values = load_values(sets=["encryption.enabled=true", "encryption.type=ipsec"])
    write_node_values(paths, values, {"node-3": ["encryption.engine=userspace"]}, NODES)
    own = node_values_file(paths, "node-3")
    assert own is not None and node_values_file(paths, "node-1") is None
    assert own.stat().st_mode & 0o777 == 0o600
    tree = yaml.safe_load(own.read_text())
    assert tree["encryption"]["engine"] == "userspace" and tree["encryption"]["type"] == "ipsec"
    write_node_values(paths, values, {}, NODES)
    assert node_values_file(paths, "node-3") is None


def test_an_unknown_value_is_refused_by_the_schema(tmp_path: Path) -> None:
    paths = LabPaths("nv", tmp_path)
    with pytest.raises(ValueError, match=r"encryption\.engine"):
        write_node_values(paths, load_values(), {"node-1": ["encryption.engine=fast"]}, NODES)


def test_a_comma_does_not_smuggle_a_cluster_wide_key_in(tmp_path: Path) -> None:
    paths = LabPaths("nv", tmp_path)
    sets = {"node-1": ["encryption.engine=userspace,encryption.type=wireguard"]}
    with pytest.raises(ValueError, match="is not one of"):
        write_node_values(paths, load_values(sets=["encryption.enabled=true"]), sets, NODES)


def test_on_kubernetes_a_node_set_is_a_node_config_under_the_configmaps_key() -> None:
    obj = node_config_object("node-3", ["encryption.engine=userspace"])
    meta = obj["metadata"]
    assert (meta["name"], meta["namespace"]) == ("ciphermesh-lab-node-3", "kube-system")
    assert obj["spec"] == {"nodeSelector": {"matchLabels": {"kubernetes.io/hostname": "node-3"}},
                           "defaults": {"encryption-engine": "userspace"}}
    # The same selection, by Cilium's rules, picks node-3 alone.
    labels = {name: {"kubernetes.io/hostname": name} for name in NODES}
    assert [n for n in NODES if selector_matches(obj["spec"]["nodeSelector"], labels[n])] == ["node-3"]


@pytest.mark.parametrize("assignment", ["encryption.engine=fast",
                                        "encryption.engine=userspace,encryption.type=x"])
def test_a_node_config_refuses_a_value_its_setting_refuses(assignment: str) -> None:
    with pytest.raises(LabError, match=r"--node-set node-3:encryption\.engine=.*is not one of"):
        node_config_object("node-3", [assignment])
