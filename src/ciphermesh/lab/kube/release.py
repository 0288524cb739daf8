"""The values a Kubernetes lab's agents run with: those of the Helm release `cilium` in `kube-system`.

On Kubernetes the chart can be installed after `lab up` (`ciphermesh install --set ...`, the seed's
order), so the lab's own values file need not be what runs; the release's user-supplied values are (the
chart's defaults are the settings' defaults).
"""

from __future__ import annotations

import json
import subprocess

from ciphermesh.config import Values, ValuesError
from ciphermesh.lab.info import LabError
from ciphermesh.lab.state import LabPaths
from ciphermesh.store.errors import StoreError
from ciphermesh.store.third_party import third_party_binary

RELEASE = "cilium"
RELEASE_NAMESPACE = "kube-system"
_HELM_TIMEOUT = 60.0


def release_values(paths: LabPaths) -> Values | None:
    """The installed release's values over the defaults; None if the chart is not installed."""
    try:
        helm = third_party_binary("helm")
    except StoreError as exc:
        raise LabError(str(exc)) from None
    done = subprocess.run(
        [str(helm), "get", "values", RELEASE, "-n", RELEASE_NAMESPACE, "-o", "json",
         f"--kubeconfig={paths.kubeconfig}"],
        capture_output=True, text=True, timeout=_HELM_TIMEOUT, check=False,
    )
    if done.returncode != 0:
        if "release: not found" in done.stderr:
            return None
        raise LabError(f"lab {paths.name}: helm get values {RELEASE}: {done.stderr.strip()}")
    supplied = json.loads(done.stdout or "null") or {}
    try:
        return Values().with_mapping(supplied, source=f"release {RELEASE_NAMESPACE}/{RELEASE}")
    except ValuesError as exc:
        raise LabError(f"lab {paths.name}: {exc}") from None
