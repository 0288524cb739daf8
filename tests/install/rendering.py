"""The chart rendered by the pinned helm, split into its objects, for the install tests."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

import pytest
import yaml

from ciphermesh.install import NAMESPACE, RELEASE, chart_path
from ciphermesh.store.third_party import ThirdPartyMissingError, third_party_binary


def helm_binary() -> str:
    """The pinned helm, or a failure naming the setup step (the tests must run, not skip)."""
    try:
        return str(third_party_binary("helm"))
    except ThirdPartyMissingError as exc:
        pytest.fail(str(exc), pytrace=False)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120, check=False)


def helm_template(sets: Sequence[str]) -> str:
    """`helm template` with helm's own `--set` parsing (what a user of plain helm gets)."""
    args = [f"--set={expr}" for expr in sets]
    done = helm("template", RELEASE, str(chart_path()), f"--namespace={NAMESPACE}", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def objects(manifests: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifests) if doc]


def one(manifests: str | list[dict[str, Any]], kind: str, name: str, namespace: str | None = None
        ) -> dict[str, Any]:
    """The single object of `kind` and `name` (and `namespace`) among the manifests."""
    docs = objects(manifests) if isinstance(manifests, str) else manifests
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name
             and (namespace is None or d["metadata"].get("namespace") == namespace)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} objects"
    return found[0]


def config_map_data(manifests: str) -> dict[str, str]:
    data = one(manifests, "ConfigMap", "cilium-config", NAMESPACE)["data"]
    assert all(isinstance(value, str) for value in data.values()), data
    return dict(data)
