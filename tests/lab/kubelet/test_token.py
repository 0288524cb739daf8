"""Projected tokens from the real TokenRequest API: bound to the pod, refreshed at 80% of what was asked
(also when the server extends the token's life), and useless once the pod is deleted."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ciphermesh.lab.kubelet.token import REFRESH_FRACTION, request_token
from ciphermesh.store.kubernetes.client import KubeApiError, KubeClient, KubeConfig
from tests.support.kube import KubeCluster
from tests.support.wait import wait_until

REVIEW = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
BODY = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}


@pytest.mark.slow
def test_tokens_are_bound_and_refreshed_before_expiry(tmp_path: Path) -> None:
    cluster = KubeCluster(tmp_path / "kube")
    try:
        cluster.kubectl("create", "serviceaccount", "-n", "kube-system", "probe")
        pod = json.loads(cluster.kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe", "namespace": "kube-system"},
            "spec": {"serviceAccountName": "probe", "automountServiceAccountToken": False,
                     "nodeName": "node-1", "containers": [{"name": "c", "image": "busybox"}]}})))
        api = KubeClient(KubeConfig.from_file(cluster.kubeconfig))
        for expiration in (600, 3607):  # 3607 is the one the server extends to a year
            before = time.monotonic()
            token = request_token(api, namespace="kube-system", service_account="probe",
                                  pod=("probe", pod["metadata"]["uid"]), expiration=expiration, audience=None)
            assert not token.due()
            assert token.refresh_at - before == pytest.approx(REFRESH_FRACTION * expiration, abs=5)
        ca_file = KubeConfig.from_file(cluster.kubeconfig).ca_file
        as_pod = KubeClient(KubeConfig(server=cluster.url, ca_file=ca_file, token=token.value))
        user = as_pod.request("POST", REVIEW, BODY)["status"]["userInfo"]
        assert user["username"] == "system:serviceaccount:kube-system:probe"
        cluster.kubectl("delete", "pod", "-n", "kube-system", "probe", "--grace-period=0", "--force")

        def refused() -> bool:
            try:
                as_pod.request("POST", REVIEW, BODY)
            except KubeApiError as exc:
                return exc.code == 401
            return False

        # The server checks the bound Pod through its informer cache: soon, not at once.
        wait_until(refused, 30, "the token refused once its pod is gone")
    finally:
        cluster.close()
