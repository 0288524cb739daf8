"""ServiceAccounts for tests that run as a pod would: RBAC, a TokenRequest token, the mounted directory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from ciphermesh.store.kubernetes.client import JSONObject, KubeClient
from ciphermesh.store.kubernetes.incluster import SERVICEACCOUNT_DIR_ENV
from tests.support.atomic_writer import kubelet_write
from tests.support.kube import KubeCluster

NAMESPACE = "kube-system"
RBAC = "/apis/rbac.authorization.k8s.io/v1"

# What the shared k8s plan grants (the chart's RBAC): the agent has no permission on Secrets at all.
AGENT_RULES: Mapping[str | None, list[JSONObject]] = {
    None: [
        {"apiGroups": ["cilium.io"], "resources": ["ciliumnodes"],
         "verbs": ["get", "list", "watch", "create", "update"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
    ],
    "kube-node-lease": [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "verbs": ["create", "get", "list", "watch", "update"]},
    ],
    "kube-system": [
        {"apiGroups": ["cilium.io"], "resources": ["ciliumnodeconfigs"], "verbs": ["get", "list", "watch"]},
    ],
}
OPERATOR_RULES: Mapping[str | None, list[JSONObject]] = {
    None: [
        {"apiGroups": ["cilium.io"], "resources": ["ciliumnodes"],
         "verbs": ["get", "list", "watch", "update", "delete"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
    ],
    "kube-node-lease": [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "watch"]},
    ],
    "kube-system": [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "verbs": ["create", "get", "list", "watch", "update", "delete"]},
    ],
}


def service_account(admin: KubeClient, name: str, rules: Mapping[str | None, list[JSONObject]]) -> None:
    """ServiceAccount kube-system/`name`, bound to a ClusterRole (key None) and Roles (by namespace)."""
    admin.request("POST", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts", {"metadata": {"name": name}})
    for namespace, granted in rules.items():
        kind = "Role" if namespace else "ClusterRole"
        scope = f"{RBAC}/namespaces/{namespace}" if namespace else RBAC
        meta = {"name": name, **({"namespace": namespace} if namespace else {})}
        admin.request("POST", f"{scope}/{kind.lower()}s", {"kind": kind, "metadata": meta, "rules": granted})
        admin.request("POST", f"{scope}/{kind.lower()}bindings", {
            "kind": f"{kind}Binding", "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}],
        })


def request_token(admin: KubeClient, name: str) -> str:
    """A token from the TokenRequest API, as the kubelet gets the one it projects into a pod."""
    review = admin.request(
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{name}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"expirationSeconds": 3600}},
    )
    return str(review["status"]["token"])


def pod_environment(kube: KubeCluster, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod's view of the API server: the Service variables and the ServiceAccount directory (its CA and
    namespace; `mount_token` adds the token)."""
    assert kube.server is not None
    ca = kube.server.pki.ca_cert.read_bytes()
    kubelet_write(directory, {"ca.crt": ca, "namespace": NAMESPACE.encode()})
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(kube.port))
    monkeypatch.setenv(SERVICEACCOUNT_DIR_ENV, str(directory))


def mount_token(directory: Path, token: str) -> None:
    """The kubelet's refresh of a projected token: the whole volume swapped atomically."""
    files = {name: (directory / name).read_bytes() for name in ("ca.crt", "namespace")}
    kubelet_write(directory, {**files, "token": token.encode()})


def whoami(api: KubeClient) -> str:
    """The user the API server takes `api` for (a SelfSubjectReview)."""
    review = api.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                         {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    return str(review["status"]["userInfo"]["username"])
