"""Projected ServiceAccount tokens from the TokenRequest API, bound to the pod, refreshed before expiry."""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass

from ciphermesh.store.kubernetes.client import KubeClient

# The kubelet asks again once 80% of a token's lifetime is gone (pkg/kubelet/token/token_manager.go).
REFRESH_FRACTION = 0.8
DEFAULT_EXPIRATION = 3607  # what the ServiceAccount admission plugin puts in kube-api-access volumes


@dataclass(frozen=True)
class Token:
    """A token and the monotonic time at which it is to be replaced."""

    value: str
    refresh_at: float

    def due(self) -> bool:
        return time.monotonic() >= self.refresh_at


def request_token(
    api: KubeClient,
    *,
    namespace: str,
    service_account: str,
    pod: tuple[str, str],
    expiration: int,
    audience: str | None,
) -> Token:
    """A token for `service_account` bound to the pod (name, uid): deleting the Pod invalidates it."""
    name, uid = pod
    spec: dict[str, object] = {
        "expirationSeconds": expiration,
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": name, "uid": uid},
    }
    if audience:
        spec["audiences"] = [audience]
    answer = api.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
    )
    status = answer["status"]
    expires = datetime.datetime.fromisoformat(str(status["expirationTimestamp"]).replace("Z", "+00:00"))
    left = (expires - datetime.datetime.now(datetime.UTC)).total_seconds()
    # The server may extend a token's life (--service-account-extend-token-expiration); refresh by
    # what was asked for, as the kubelet does, and never later than the real expiry.
    lifetime = min(float(expiration), left)
    return Token(str(status["token"]), time.monotonic() + REFRESH_FRACTION * lifetime)
