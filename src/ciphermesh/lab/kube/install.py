"""Installing the chart on a lab's API server: the one seam between `lab up` and `ciphermesh install`."""

from __future__ import annotations

from pathlib import Path

from ciphermesh.config import Values
from ciphermesh.install import Helm, InstallError
from ciphermesh.lab.info import LabError


def install_chart(kubeconfig: Path, values: Values) -> None:
    """`helm upgrade --install cilium` of the repository's chart with the lab's values (`kubeconfig`)."""
    try:
        Helm.pinned(kubeconfig).install(values)
    except InstallError as exc:
        raise LabError(f"installing ciphermesh: {exc}") from None
