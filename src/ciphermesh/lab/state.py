"""Where a lab keeps its files: one directory per lab name, laid out here and nowhere else."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAB_ROOT_ENV = "CIPHERMESH_LAB_ROOT"
DEFAULT_LAB_ROOT = Path("/run/ciphermesh/labs")
_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")


class LabNameError(ValueError):
    """A lab name that cannot prefix namespace and device names."""


def check_lab_name(name: str) -> str:
    # Names prefix namespaces (`<lab>-node-<i>`) and devices: a short one keeps them under 15 bytes.
    if not _NAME.match(name):
        raise LabNameError(
            f"lab name {name!r}: use 1 to 8 lowercase letters or digits, starting with a letter"
        )
    return name


def lab_root() -> Path:
    return Path(os.environ.get(LAB_ROOT_ENV, str(DEFAULT_LAB_ROOT)))


@dataclass(frozen=True)
class LabPaths:
    """The files of one lab."""

    name: str
    root: Path

    @classmethod
    def of(cls, name: str) -> LabPaths:
        return cls(check_lab_name(name), lab_root() / name)

    @property
    def marker(self) -> str:
        """The value of `CIPHERMESH_LAB` on the lab's daemons: its state directory, absolute."""
        return str(self.root.absolute())

    @property
    def manifest(self) -> Path:
        return self.root / "lab.json"

    @property
    def values(self) -> Path:
        return self.root / "values.yaml"

    @property
    def etcd_dir(self) -> Path:
        return self.root / "etcd"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def kube_dir(self) -> Path:
        """The Kubernetes control plane's files: `pki/` (0700), `admin.kubeconfig` (0600), `bin/`."""
        return self.root / "kube"

    @property
    def kube_pki(self) -> Path:
        return self.kube_dir / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.kube_dir / "admin.kubeconfig"

    @property
    def kube_bin(self) -> Path:
        """The directory `lab env` puts on PATH: the pinned kubectl and helm, nothing else."""
        return self.kube_dir / "bin"

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def node_root(self, node: str) -> Path:
        """What a hostPath volume `/X` of the node is: `<node_root>/X` (as the lab kubelet mounts it)."""
        return self.node_dir(node) / "root"

    def agent_socket(self, node: str) -> Path:
        # The chart's agent serves it in the hostPath /var/run/cilium; the etcd mode's agents use the same.
        return self.node_root(node) / "var" / "run" / "cilium" / "ciphermesh.sock"

    def pod_dir(self) -> Path:
        return self.root / "pods"

    def create(self) -> None:
        for directory in (self.root, self.etcd_dir, self.logs, self.pids, self.pod_dir()):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The store's socket is in here: only who may read the key may enter.
        self.root.chmod(0o700)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_private(self.manifest, json.dumps(manifest, indent=2) + "\n")

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.manifest.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
