"""A lab for the kubelet's tests: a real kube-apiserver, real node namespaces, a hand-written lab.json and
the kubelet daemon started as `lab up` starts it; everything it started is gone afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ciphermesh.lab.processes import kill_pids, marked_pids, read_pidfile, start_daemon, stop_daemon
from ciphermesh.lab.state import LAB_ROOT_ENV
from ciphermesh.lab.topology import TopologyPlan
from tests.support.kube import KubeCluster
from tests.support.netns import built_lab
from tests.support.wait import wait_until


@dataclass
class KubeletLab:
    cluster: KubeCluster
    plan: TopologyPlan
    root: Path
    labs: Path

    @property
    def marker(self) -> str:
        return str(self.root.absolute())

    @property
    def pidfile(self) -> Path:
        return self.root / "pids" / "kubelet.pid"

    def start_kubelet(self) -> int:
        env = {**os.environ, LAB_ROOT_ENV: str(self.labs)}
        start_daemon([sys.executable, "-m", "ciphermesh", "lab", "kubelet", "--lab", self.plan.lab],
                     pidfile=self.root / "pids" / "kubelet-start.pid", log=self.root / "logs" / "kubelet.log",
                     env=env, marker=self.marker)
        return wait_until(lambda: read_pidfile(self.pidfile), 30, "the kubelet's pid file",
                          detail=self.kubelet_log)

    def kubelet_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "logs" / "kubelet.log").read_text()[-3000:]
        return ""

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.cluster.kubectl(*args, "-o", "json"))

    def apply(self, manifest: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))

    def pods(self) -> list[dict[str, Any]]:
        return list(self.kubectl_json("get", "pods", "-n", "kube-system")["items"])

    def node_root(self, node: str) -> Path:
        return self.root / "nodes" / node / "root"


@contextlib.contextmanager
def kubelet_lab(tmp_path: Path, lab: str, nodes: int = 2) -> Iterator[KubeletLab]:
    cluster = KubeCluster(tmp_path / "kube")
    try:
        with built_lab(nodes, lab) as plan:
            labs = tmp_path / "labs"
            root = labs / lab
            for sub in ("logs", "pids"):
                (root / sub).mkdir(parents=True, mode=0o700)
            manifest = {
                "name": lab, "nodes": [n.name for n in plan.nodes],
                "nodeIPs": {n.name: str(n.ip) for n in plan.nodes}, "subnet": str(plan.subnet),
                "store": f"kubernetes://{cluster.kubeconfig}", "controlPlane": "kubernetes",
                "kubeconfig": str(cluster.kubeconfig),
            }
            (root / "lab.json").write_text(json.dumps(manifest))
            (root / "values.yaml").write_text("{}\n")
            setup = KubeletLab(cluster, plan, root, labs)
            try:
                yield setup
            finally:
                stop_daemon(setup.pidfile)
                kill_pids(marked_pids(setup.marker))
                assert not marked_pids(setup.marker)
    finally:
        cluster.close()
