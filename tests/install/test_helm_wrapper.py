"""What the helm wrapper hands helm: the validated tree in a values file only this user can read, removed
afterwards; the kubeconfig flag when one is given; helm's error line when it fails. A stand-in script
records its arguments (the real helm runs in test_install.py)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml

from ciphermesh.config import load_values
from ciphermesh.install import Helm, InstallError, chart_path

# Prints its arguments and, for the --values file, its mode and its content, as one JSON object.
RECORDER = """#!/usr/bin/env python3
import json, os, stat, sys
values = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--values=")), None)
seen = {"args": sys.argv[1:]}
if values:
    seen["mode"] = stat.S_IMODE(os.stat(values).st_mode)
    seen["values"] = open(values).read()
    seen["path"] = values
print(json.dumps(seen))
"""
FAILING = """#!/bin/sh
echo 'WARNING: Kubernetes configuration file is group-readable.' >&2
echo 'Error: INSTALLATION FAILED: cannot re-use a name that is still in use' >&2
exit 1
"""


def _script(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "helm"
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_install_hands_over_the_validated_tree_in_a_private_file(tmp_path: Path) -> None:
    values = load_values(sets=["encryption.enabled=true",
                               "ipam.operator.clusterPoolIPv4PodCIDRList={10.9.0.0/16}"])
    seen = json.loads(Helm(_script(tmp_path, RECORDER), tmp_path / "kc").install(values))
    assert seen["args"][:5] == ["upgrade", "--install", "cilium", str(chart_path()),
                                "--namespace=kube-system"]
    assert "--wait=false" in seen["args"] and seen["args"][-1] == f"--kubeconfig={tmp_path / 'kc'}"
    assert seen["mode"] == stat.S_IRUSR | stat.S_IWUSR
    assert yaml.safe_load(seen["values"]) == values.as_tree()
    assert not Path(seen["path"]).exists()


def test_template_includes_the_crd_and_needs_no_kubeconfig(tmp_path: Path) -> None:
    seen = json.loads(Helm(_script(tmp_path, RECORDER)).template(load_values()))
    assert seen["args"][:2] == ["template", "cilium"] and "--include-crds" in seen["args"]
    assert not any(arg.startswith("--kubeconfig") for arg in seen["args"])


def test_a_helm_failure_is_its_error_line(tmp_path: Path) -> None:
    with pytest.raises(InstallError) as caught:
        Helm(_script(tmp_path, FAILING)).uninstall()
    assert str(caught.value) == (
        "helm uninstall: INSTALLATION FAILED: cannot re-use a name that is still in use")
