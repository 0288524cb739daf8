"""`lab up --control-plane kubernetes --node-set NODE:KEY=VALUE`: one CiliumNodeConfig per overridden node
(`kube-system/ciphermesh-lab-<node>`, selecting its Node by `kubernetes.io/hostname`, which the lab kubelet
registers it with), created before the chart starts any agent, so each agent applies it on its first start.

The CRD comes from the chart's `crds/` (helm leaves a CRD that is already there alone). A second `lab up`
with the same sets changes nothing; a node no longer set loses its object. Agents read them only at start.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import yaml

from ciphermesh.config import Values, ValuesError
from ciphermesh.config.node_config import KIND, config_key_of
from ciphermesh.install import NAMESPACE, InstallError, chart_path
from ciphermesh.lab.info import LabError, LabInfo
from ciphermesh.lab.kube.control_plane import kube_client
from ciphermesh.store.errors import StoreError
from ciphermesh.store.kubernetes.client import NOT_FOUND, JSONObject, KubeApiError, KubeClient
from ciphermesh.store.kubernetes.node_configs import CRD_NAME, GROUP, VERSIONS, node_configs_path

NAME_PREFIX = "ciphermesh-lab-"
HOSTNAME_LABEL = "kubernetes.io/hostname"
# Marks the objects `lab up` owns, so that it removes only its own.
OWNER_LABEL = "ciphermesh.io/lab-node-set"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
CRD_FILE = "ciliumnodeconfigs.yaml"


def node_config_object(node: str, assignments: list[str]) -> JSONObject:
    """The CiliumNodeConfig for `node`'s `KEY=VALUE` settings, under the ConfigMap's key names."""
    defaults: dict[str, str] = {}
    for assignment in assignments:
        setting, _, raw = assignment.partition("=")
        try:
            # One value, not `--set`'s comma lists: `userspace,encryption.type=x` is refused, not split.
            Values().with_value(setting, raw)
        except ValuesError as exc:
            raise LabError(f"--node-set {node}:{assignment}: {exc}") from None
        defaults[config_key_of(setting)] = raw
    return {
        "apiVersion": f"{GROUP}/{VERSIONS[0]}", "kind": KIND,
        "metadata": {"name": NAME_PREFIX + node, "namespace": NAMESPACE, "labels": {OWNER_LABEL: "true"}},
        "spec": {"nodeSelector": {"matchLabels": {HOSTNAME_LABEL: node}}, "defaults": defaults},
    }


def ensure_node_configs(info: LabInfo, node_sets: Mapping[str, list[str]], timeout: float) -> list[str]:
    """Make the lab's CiliumNodeConfigs those of `node_sets`; what changed (for the progress line)."""
    wanted = {NAME_PREFIX + node: node_config_object(node, sets) for node, sets in node_sets.items()}
    api = kube_client(info.paths)
    try:
        if not _crd_served(api):
            if not wanted:
                return []
            _create_crd(api, timeout)
        path = node_configs_path(NAMESPACE)
        changes = []
        for name, obj in wanted.items():
            changes += _put(api, path, name, obj)
        selector = {"labelSelector": f"{OWNER_LABEL}=true"}
        for item in api.request("GET", path, params=selector).get("items") or []:
            name = str(item["metadata"]["name"])
            if name not in wanted:
                api.request("DELETE", f"{path}/{name}")
                changes.append(f"deleted {KIND} {NAMESPACE}/{name}")
        return changes
    except StoreError as exc:
        raise LabError(f"lab {info.name}: {KIND}: {exc}") from None
    finally:
        api.close()


def _put(api: KubeClient, path: str, name: str, obj: JSONObject) -> list[str]:
    try:
        current = api.request("GET", f"{path}/{name}")
    except KubeApiError as exc:
        if exc.code != NOT_FOUND:
            raise
        api.request("POST", path, obj)
        return [f"created {KIND} {NAMESPACE}/{name}"]
    if current.get("spec") == obj["spec"]:
        return []
    version = current["metadata"]["resourceVersion"]
    api.request("PUT", f"{path}/{name}", {**obj, "metadata": {**obj["metadata"], "resourceVersion": version}})
    return [f"updated {KIND} {NAMESPACE}/{name} (running agents apply it when they restart)"]


def _crd_served(api: KubeClient) -> bool:
    try:
        api.request("GET", node_configs_path(NAMESPACE), params={"limit": "1"})
    except KubeApiError as exc:
        if exc.code == NOT_FOUND:
            return False
        raise
    return True


def _create_crd(api: KubeClient, timeout: float) -> None:
    """The chart's CiliumNodeConfig CRD, created and waited for until the API serves its objects."""
    try:
        crd: dict[str, Any] = yaml.safe_load((chart_path() / "crds" / CRD_FILE).read_text())
    except (InstallError, OSError) as exc:
        raise LabError(f"the {KIND} CRD: {exc}") from None
    try:
        api.request("POST", CRDS, crd)
    except KubeApiError as exc:
        if exc.reason != "AlreadyExists":
            raise
    deadline = time.monotonic() + timeout
    while not _crd_served(api):
        if time.monotonic() > deadline:
            raise LabError(f"CRD {CRD_NAME} is not served {timeout:.0f} s after its creation")
        time.sleep(0.2)
