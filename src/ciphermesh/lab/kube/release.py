"""The values a Kubernetes lab's agents run with: those of the Helm release `cilium` in `kube-system`.

On Kubernetes the chart can be installed after `lab up` (`ciphermesh install --set ...`, the seed's
order), so the lab's own values file need not be what runs; the release's user-supplied values are (the
chart's defaults are the settings' defaults).
"""

from __future__ import annotations

import json

from ciphermesh.config import Values, ValuesError
from ciphermesh.install import NAMESPACE, RELEASE, Helm, InstallError
from ciphermesh.lab.info import LabError
from ciphermesh.lab.state import LabPaths


def release_values(paths: LabPaths) -> Values | None:
    """The installed release's values over the defaults; None if the chart is not installed."""
    try:
        supplied = json.loads(Helm.pinned(paths.kubeconfig).run("get", "values", RELEASE,
                                                                 f"--namespace={NAMESPACE}", "-o", "json"))
    except InstallError as exc:
        if "release: not found" in str(exc):
            return None
        raise LabError(f"lab {paths.name}: {exc}") from None
    try:
        return Values().with_mapping(supplied or {}, source=f"release {NAMESPACE}/{RELEASE}")
    except ValuesError as exc:
        raise LabError(f"lab {paths.name}: {exc}") from None
