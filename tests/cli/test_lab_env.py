"""`ciphermesh lab env`: shell lines bash can eval even where the lab root has a space in it, and a clear
error for a lab on the etcd control plane (it has no kubeconfig). The labs are their records alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ciphermesh.lab.state import LAB_ROOT_ENV, LabPaths
from tests.support.lab import error_line, run_cli


def _record(name: str, control_plane: str) -> LabPaths:
    """A lab's record under the lab root the test set."""
    paths = LabPaths.of(name)
    paths.create()
    paths.write_manifest({"name": name, "nodes": ["node-1"], "nodeIPs": {"node-1": "172.18.0.2"},
                          "subnet": "172.18.0.0/24", "store": f"kubernetes://{paths.kubeconfig}",
                          "controlPlane": control_plane, "kubeconfig": str(paths.kubeconfig)})
    return paths


def test_lab_env_is_evaluated_by_bash_into_path_and_kubeconfig(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LAB_ROOT_ENV, str(tmp_path / "lab root"))
    paths = _record("envk", "kubernetes")
    script = (f'eval "$({sys.executable} -m ciphermesh lab env --lab envk)" && command -v kubectl helm '
              '&& printf "%s\\n" "$KUBECONFIG" && kubectl version --client -o yaml >/dev/null')
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(paths.kube_bin / "kubectl"), str(paths.kube_bin / "helm"),
                                        str(paths.kubeconfig.absolute())]
    # Only kubectl and helm: the lab's PATH entry does not shadow the machine's python or anything else.
    assert sorted(entry.name for entry in paths.kube_bin.iterdir()) == ["helm", "kubectl"]


def test_lab_env_of_an_etcd_lab_says_it_has_no_kubeconfig(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LAB_ROOT_ENV, str(tmp_path))
    _record("enve", "etcd")
    result = run_cli("lab", "env", "--lab", "enve")
    line = error_line(result)
    assert "lab enve runs on the etcd control plane" in line and "--control-plane kubernetes" in line, line
    assert result.stdout == ""
