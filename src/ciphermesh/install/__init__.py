"""Installing ciphermesh on a cluster: the repository's Helm chart, through the pinned helm."""

from ciphermesh.install.helm import NAMESPACE, RELEASE, Helm, InstallError, chart_path

__all__ = ["NAMESPACE", "RELEASE", "Helm", "InstallError", "chart_path"]
