"""What a lab is, as `lab up` recorded it, and the lab's one error type (shared by the cluster and its
control-plane modules)."""

from __future__ import annotations

from dataclasses import dataclass

from ciphermesh.config import Values, load_values
from ciphermesh.lab.names import node_netns
from ciphermesh.lab.state import LabPaths

ETCD = "etcd"
KUBERNETES = "kubernetes"
CONTROL_PLANES = (KUBERNETES, ETCD)


class LabError(RuntimeError):
    """A lab could not be built, found or removed; the message says what to do."""


@dataclass(frozen=True)
class LabInfo:
    """What `lab up` recorded about a running lab; `control_plane` is `etcd` or `kubernetes`."""

    name: str
    nodes: tuple[str, ...]
    node_ips: dict[str, str]
    subnet: str
    store: str
    paths: LabPaths
    control_plane: str = ETCD

    def values(self) -> Values:
        """The values the lab was started with."""
        return load_values(files=[str(self.paths.values)])

    def netns_of(self, node: str) -> str:
        if node not in self.node_ips:
            known = ", ".join(self.nodes)
            raise LabError(f"lab {self.name} has no node {node!r} (nodes: {known})")
        return node_netns(self.name, self.nodes.index(node) + 1)

    @property
    def namespaces(self) -> tuple[str, ...]:
        """The node namespaces, in node order."""
        return tuple(node_netns(self.name, index) for index in range(1, len(self.nodes) + 1))


def kubernetes_store(paths: LabPaths) -> str:
    """The store endpoint of a Kubernetes lab, as `--store` takes it: the admin kubeconfig's path."""
    return f"kubernetes://{paths.kubeconfig.absolute()}"
