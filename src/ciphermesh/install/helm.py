"""The one chart (install/kubernetes/ciphermesh) driven through the pinned helm, as cilium-cli drives
Cilium's: release `cilium` in `kube-system`, values from the validated tree, never a second manifest."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from ciphermesh.config import Values
from ciphermesh.store.third_party import ThirdPartyMissingError, third_party_binary

RELEASE = "cilium"
NAMESPACE = "kube-system"
# src/ciphermesh/install/helm.py -> the checkout's root.
_CHECKOUT = Path(__file__).resolve().parents[3]
CHART = _CHECKOUT / "install" / "kubernetes" / "ciphermesh"
# helm talks to the API server; a stuck one must not hang the command for ever.
HELM_TIMEOUT = 300.0


class InstallError(Exception):
    """helm is missing or failed; the message is one line, helm's own error where it gave one."""


def chart_path() -> Path:
    """The chart of this checkout, or InstallError saying where it was looked for."""
    if not (CHART / "Chart.yaml").is_file():
        raise InstallError(f"the chart is not at {CHART}: ciphermesh install runs from a checkout of the "
                           "repository (pip install -e .)")
    return CHART


def _helm_error(stderr: str, what: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("Error: ") for line in lines if line.startswith("Error:")]
    reason = errors[-1] if errors else (lines[-1] if lines else "no message")
    # helm often starts its own message with the command's name: say it once.
    return f"helm {what}: {reason.removeprefix(f'{what}: ')}"


@contextlib.contextmanager
def _values_file(values: Values) -> Iterator[Path]:
    """The whole validated tree as a values file readable by this user only, removed afterwards."""
    fd, name = tempfile.mkstemp(prefix="ciphermesh-values-", suffix=".yaml")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yaml.safe_dump(values.as_tree(), handle, sort_keys=False)
        yield Path(name)
    finally:
        os.unlink(name)


@dataclass(frozen=True)
class Helm:
    """helm against one cluster: `kubeconfig`, or helm's own choice ($KUBECONFIG, ~/.kube/config)."""

    binary: Path
    kubeconfig: Path | None = None

    @classmethod
    def pinned(cls, kubeconfig: Path | None = None) -> Helm:
        """The helm that scripts/third-party.sh built, or InstallError naming the setup step."""
        try:
            return cls(third_party_binary("helm"), kubeconfig)
        except ThirdPartyMissingError as exc:
            raise InstallError(str(exc)) from None

    def run(self, *args: str) -> str:
        """helm's standard output for `args`; InstallError with helm's error line if it fails."""
        command = [str(self.binary), *args]
        if self.kubeconfig is not None:
            command.append(f"--kubeconfig={self.kubeconfig}")
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=HELM_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise InstallError(f"helm {args[0]}: no answer within {HELM_TIMEOUT:.0f} s") from None
        except OSError as exc:
            raise InstallError(f"helm {args[0]}: cannot run {self.binary} ({exc.strerror})") from None
        if done.returncode != 0:
            raise InstallError(_helm_error(done.stderr, args[0]))
        return done.stdout

    def install(self, values: Values) -> str:
        """Install or upgrade the release with `values`; returns without waiting for the pods."""
        with _values_file(values) as file:
            return self.run("upgrade", "--install", RELEASE, str(chart_path()), f"--namespace={NAMESPACE}",
                            f"--values={file}", "--wait=false")

    def uninstall(self) -> str:
        """Remove the release; Helm keeps the CRD (and so the CiliumNodes), as it does for Cilium."""
        return self.run("uninstall", RELEASE, f"--namespace={NAMESPACE}")

    def template(self, values: Values) -> str:
        """The manifests the release would have, CRD included, as multi-document YAML."""
        with _values_file(values) as file:
            return self.run("template", RELEASE, str(chart_path()), f"--namespace={NAMESPACE}",
                            f"--values={file}", "--include-crds")
