"""The chart without a cluster: helm lint, values.yaml and the schema the same, the ConfigMap read back
into the same values the CLI gives, the agent's volumes and the operator's Secret rule as the values ask."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

from ciphermesh import __version__
from ciphermesh.cli.main import main
from ciphermesh.cli.values import values_from_args
from ciphermesh.config import SETTINGS, Values
from ciphermesh.config.agent_config import values_from_config_dir
from ciphermesh.config.schema import IMAGE_TAG
from ciphermesh.install import Helm, chart_path
from tests.install.rendering import config_map_data, helm, helm_binary, helm_template, objects, one
from tests.support.atomic_volume import write_volume

# Settings of the chart alone: how the pods run, not what the agent or the operator reads.
CHART_ONLY = ("image.repository", "image.tag", "image.pullPolicy", "operator.replicas")

# Between them, every setting the agent and the operator read is given a value other than its default.
COMBINATIONS: dict[str, tuple[str, ...]] = {
    "ipsec": ("encryption.enabled=true", "encryption.type=ipsec"),
    "wireguard-node": ("encryption.enabled=true", "encryption.type=wireguard",
                       "encryption.nodeEncryption=true", "encryption.wireguard.persistentKeepalive=25s"),
    "strict": ("encryption.enabled=true", "encryption.strictMode.enabled=true",
               "encryption.strictMode.cidr=10.20.0.0/16",
               "encryption.strictMode.allowRemoteNodeIdentities=true"),
    "pool": ("ipam.operator.clusterPoolIPv4PodCIDRList={10.10.0.0/16,10.30.0.0/16}",
             "ipam.operator.clusterPoolIPv4MaskSize=26", "MTU=1400"),
    "disabled": (),
    "disabled-wireguard": ("encryption.enabled=false", "encryption.type=wireguard"),
    "userspace": ("encryption.enabled=true", "encryption.engine=userspace"),
    "ipsec-custom": ("encryption.enabled=true", "encryption.ipsec.autoRotateInterval=1h30m",
                     "encryption.ipsec.keyRotationDuration=90s", "encryption.ipsec.mountPath=/run/keys",
                     "encryption.ipsec.keyFile=psk", "encryption.ipsec.secretName=my-keys",
                     "encryption.ipsec.keyWatcher=false", "encryption.ipsec.interface=eth1"),
}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _from_cli(sets: tuple[str, ...]) -> Values:
    return values_from_args(argparse.Namespace(sets=list(sets), value_files=[]))


def _read_by_daemons(values: Values) -> dict[str, object]:
    """Every setting the agent and the operator read; the encryption type only when encryption is on."""
    read = {s.path: values.get(s.path) for s in SETTINGS if s.path not in CHART_ONLY}
    if not values.flag("encryption.enabled"):
        del read["encryption.type"]
    return read


def test_helm_lint_passes() -> None:
    done = helm("lint", "--strict", str(chart_path()))
    assert done.returncode == 0, done.stdout + done.stderr


def test_values_yaml_is_the_schema() -> None:
    values_yaml = _flatten(yaml.safe_load((chart_path() / "values.yaml").read_text()))
    schema = {s.path: list(s.default) if isinstance(s.default, tuple) else s.default for s in SETTINGS}
    assert values_yaml == schema


def test_the_chart_and_the_image_are_this_release() -> None:
    chart = yaml.safe_load((chart_path() / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == IMAGE_TAG == __version__


def test_the_combinations_cover_every_setting_the_daemons_read() -> None:
    changed = set()
    for sets in COMBINATIONS.values():
        values = _from_cli(sets)
        changed |= {path for path, value in _read_by_daemons(values).items() if value != Values().get(path)}
    # ipam.mode and tunnelProtocol have one allowed value each: their default.
    single = {s.path for s in SETTINGS if s.choices and len(s.choices) == 1}
    assert changed == set(_read_by_daemons(Values().with_value("encryption.enabled", True))) - single


@pytest.mark.parametrize("via", ["helm --set", "validated values file"])
@pytest.mark.parametrize("name", COMBINATIONS)
def test_the_config_map_reads_back_as_the_cli_values(tmp_path: Path, name: str, via: str) -> None:
    sets = COMBINATIONS[name]
    expected = _from_cli(sets)
    manifests = helm_template(sets) if via == "helm --set" else Helm.pinned().template(expected)
    write_volume(tmp_path / "config-map", config_map_data(manifests))
    assert _read_by_daemons(values_from_config_dir(tmp_path / "config-map")) == _read_by_daemons(expected)


def _agent_pod(manifests: str) -> dict[str, Any]:
    return one(manifests, "DaemonSet", "cilium", "kube-system")["spec"]["template"]["spec"]


def test_the_key_secret_is_mounted_only_with_ipsec() -> None:
    ipsec = _agent_pod(helm_template(COMBINATIONS["ipsec-custom"]))
    volume = next(v for v in ipsec["volumes"] if v["name"] == "cilium-ipsec-secrets")
    assert volume["secret"]["secretName"] == "my-keys"
    mount = next(m for m in ipsec["containers"][0]["volumeMounts"] if m["name"] == "cilium-ipsec-secrets")
    assert mount == {"name": "cilium-ipsec-secrets", "mountPath": "/run/keys", "readOnly": True}
    for name in ("wireguard-node", "disabled"):
        pod = _agent_pod(helm_template(COMBINATIONS[name]))
        assert "cilium-ipsec-secrets" not in {v["name"] for v in pod["volumes"]}, name


def test_the_agent_runs_as_the_plan_says() -> None:
    pod = _agent_pod(helm_template(COMBINATIONS["ipsec"]))
    assert pod["hostNetwork"] is True and pod["serviceAccountName"] == "cilium"
    (container,) = pod["containers"]
    assert container["command"] == ["ciphermesh", "agent"]
    assert "--config-dir=/tmp/cilium/config-map" in container["args"]
    assert "--node=$(K8S_NODE_NAME)" in container["args"] and "--store=kubernetes" in container["args"]
    assert container["securityContext"] == {
        "privileged": False, "capabilities": {"add": ["NET_ADMIN", "NET_RAW", "SYS_MODULE"], "drop": ["ALL"]}}
    assert container["image"] == f"ghcr.io/ciphermesh/ciphermesh:{__version__}"


def test_the_agent_reads_its_namespaces_node_configs_and_may_only_read_them() -> None:
    manifests = helm_template(COMBINATIONS["ipsec"])
    (container,) = _agent_pod(manifests)["containers"]
    assert "--k8s-namespace=$(CILIUM_K8S_NAMESPACE)" in container["args"]
    env = next(e for e in container["env"] if e["name"] == "CILIUM_K8S_NAMESPACE")
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    role = one(manifests, "Role", "cilium-config-agent", "kube-system")
    assert role["rules"] == [{"apiGroups": ["cilium.io"], "resources": ["ciliumnodeconfigs"],
                              "verbs": ["get", "list", "watch"]}]
    binding = one(manifests, "RoleBinding", "cilium-config-agent", "kube-system")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cilium", "namespace": "kube-system"}]


def test_the_node_config_crd_is_cilium_s() -> None:
    crd = yaml.safe_load((chart_path() / "crds" / "ciliumnodeconfigs.yaml").read_text())
    assert crd["metadata"]["name"] == "ciliumnodeconfigs.cilium.io"
    assert (crd["spec"]["scope"], crd["spec"]["names"]["kind"]) == ("Namespaced", "CiliumNodeConfig")
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    assert [name for name, v in versions.items() if v["storage"]] == ["v2"] and versions["v2alpha1"]["served"]
    spec = versions["v2"]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["defaults", "nodeSelector"]
    assert spec["properties"]["defaults"]["additionalProperties"] == {"type": "string"}


def _operator_secret_rules(sets: tuple[str, ...]) -> list[dict[str, Any]]:
    role = one(helm_template(sets), "Role", "cilium-operator", "kube-system")
    return [rule for rule in role["rules"] if "secrets" in rule["resources"]]


@pytest.mark.parametrize("interval", ["0s", "0", "0h0m", "0.0s"])
def test_the_operator_gets_no_secret_rule_without_auto_rotation(interval: str) -> None:
    sets = ("encryption.enabled=true", f"encryption.ipsec.autoRotateInterval={interval}")
    assert _operator_secret_rules(sets) == []


def test_the_operator_gets_the_one_secret_with_auto_rotation() -> None:
    rules = _operator_secret_rules(COMBINATIONS["ipsec-custom"])
    assert rules == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["my-keys"],
                      "verbs": ["get", "list", "watch", "update", "patch"]}]
    # WireGuard has no key to rotate.
    assert _operator_secret_rules(("encryption.enabled=true", "encryption.type=wireguard",
                                   "encryption.ipsec.autoRotateInterval=1h")) == []


def test_dry_run_prints_the_manifests(capsys: pytest.CaptureFixture[str]) -> None:
    helm_binary()
    assert main(["install", "--set", "encryption.enabled=true", "--set", "operator.replicas=3",
                 "--dry-run", "-o", "yaml"]) == 0
    docs = objects(capsys.readouterr().out)
    kinds = {doc["kind"] for doc in docs}
    assert {"DaemonSet", "Deployment", "ConfigMap", "CustomResourceDefinition", "ServiceAccount"} <= kinds
    assert one(docs, "Deployment", "cilium-operator")["spec"]["replicas"] == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "encryption.typo=ipsec"], "ciphermesh: encryption.typo: unknown setting\n"),
        (["--set", "operator.replicas=-1"], "ciphermesh: operator.replicas: -1 is below the minimum 0\n"),
        (["--set", "image.pullPolicy=Sometimes"], "ciphermesh: image.pullPolicy: 'Sometimes' is not one of "
                                                  "Always, IfNotPresent, Never\n"),
    ],
)
def test_bad_values_fail_before_helm_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    # A kubeconfig that does not exist: helm would fail on it, so the schema must have refused first.
    assert main(["install", *argv, "--kubeconfig", str(tmp_path / "absent")]) == 1
    captured = capsys.readouterr()
    assert captured.err == message and captured.out == ""
