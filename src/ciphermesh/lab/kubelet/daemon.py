"""`ciphermesh lab kubelet`: the lab's stand-in kubelet for ciphermesh's workloads only.

It watches kube-system's DaemonSets and Deployments labelled `app.kubernetes.io/part-of=ciphermesh`,
their ConfigMaps and Secrets, the Nodes and the Pods, and runs one pod worker per pod it wants (playing
the DaemonSet and Deployment controllers too, since no kube-controller-manager runs in the lab). Its
pods outlive it; started again, it adopts them from `<lab>/kubelet/pods/`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ciphermesh.lab.cluster import load_lab
from ciphermesh.lab.info import LabError
from ciphermesh.lab.kubelet.controller import PodView, plan
from ciphermesh.lab.kubelet.nodes import NodeRegistry
from ciphermesh.lab.kubelet.podstate import PodStore
from ciphermesh.lab.kubelet.volumes import JSONObject
from ciphermesh.lab.kubelet.worker import PODS, KubeletContext, PodWorker
from ciphermesh.lab.kubelet.workloads import (
    DAEMONSETS,
    DEPLOYMENTS,
    NAMESPACE,
    SELECTOR,
    Workload,
    pod_body,
    workload_of,
)
from ciphermesh.lab.processes import LAB_MARKER, write_pidfile
from ciphermesh.store.errors import StoreUnavailableError
from ciphermesh.store.kubernetes.client import CONFLICT, KubeApiError, KubeClient, KubeConfig, WatchHandles
from ciphermesh.store.kubernetes.watch import Changed, Listed, list_watch

log = logging.getLogger(__name__)
SLOT_ANNOTATION = "ciphermesh.io/lab-slot"
_SOURCES = {
    "DaemonSet": (DAEMONSETS, {"labelSelector": SELECTOR}),
    "Deployment": (DEPLOYMENTS, {"labelSelector": SELECTOR}),
    "ConfigMap": (f"/api/v1/namespaces/{NAMESPACE}/configmaps", {}),
    "Secret": (f"/api/v1/namespaces/{NAMESPACE}/secrets", {}),
    "Node": ("/api/v1/nodes", {}),
    "Pod": (PODS, {}),
}


@dataclass(frozen=True)
class KubeletSetup:
    """The lab as the kubelet needs it: nodes, their IPs and namespaces, files, the admin kubeconfig."""

    root: Path
    marker: str
    node_ips: dict[str, str]
    netns: dict[str, str]
    kubeconfig: Path

    @property
    def state_dir(self) -> Path:
        return self.root / "kubelet"


class Kubelet:
    """The daemon; `run` until `stopped` is set (its pods keep running)."""

    def __init__(self, setup: KubeletSetup) -> None:
        self.setup = setup
        config = KubeConfig.from_file(setup.kubeconfig)
        self.api = KubeClient(config, timeout=10.0)
        port = urllib.parse.urlsplit(config.server).port or 443
        self.ca_file = config.ca_file
        self.cache: dict[str, dict[str, JSONObject]] = {kind: {} for kind in _SOURCES}
        self._lock = threading.Lock()
        self.registry = NodeRegistry(self.api, setup.node_ips, setup.state_dir)
        self.ctx = KubeletContext(
            api=self.api, lookup=self._lookup, pods=PodStore(setup.state_dir / "pods"),
            logs=setup.root / "logs",
            node_root=lambda node: setup.root / "nodes" / node / "root", netns_of=setup.netns.__getitem__,
            node_ip=setup.node_ips.__getitem__, marker=setup.marker,
            extra_env={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port),
                       LAB_MARKER: setup.marker},
        )
        self.workers: dict[int, PodWorker] = {}
        self._events: queue.Queue[Listed | Changed] = queue.Queue()
        self._handles = WatchHandles()

    def _lookup(self, kind: str, name: str) -> JSONObject | None:
        with self._lock:
            return self.cache[kind].get(name)

    def run(self, stopped: threading.Event) -> None:
        self.setup.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pidfile = self.setup.root / "pids" / "kubelet.pid"
        write_pidfile(pidfile, os.getpid())
        log.info("lab kubelet: plays the kubelet for ciphermesh's workloads only (nodes %s)",
                 ", ".join(self.setup.node_ips))
        self.registry.start()
        for kind, (path, selectors) in _SOURCES.items():
            threading.Thread(target=list_watch, name=f"watch {kind}", daemon=True, args=(
                self.api, kind, path, selectors), kwargs={
                "out": self._events.put, "stopped": stopped, "handles": self._handles}).start()
        listed: set[str] = set()
        adopted = False
        try:
            while not stopped.is_set():
                try:
                    item = self._events.get(timeout=0.5)
                except queue.Empty:
                    item = None
                while item is not None:
                    self._apply(item)
                    if isinstance(item, Listed):
                        listed.add(item.source)
                    try:
                        item = self._events.get_nowait()
                    except queue.Empty:
                        item = None
                # Adopted pods wait for their nodes' registration, or they would look misplaced.
                if listed != set(_SOURCES) or not self.registry.first_round.is_set():
                    continue
                if not adopted:
                    self._publish_root_ca()
                    self._adopt()
                    adopted = True
                self._reconcile()
        finally:
            self._handles.close_all()
            self.registry.stop()
            for worker in self.workers.values():
                worker.stop(teardown=False)

    def _apply(self, item: Listed | Changed) -> None:
        kind = item.source
        with self._lock:
            before = dict(self.cache[kind])
            if isinstance(item, Listed):
                self.cache[kind] = dict(item.objects)
            elif item.kind == "DELETED":
                self.cache[kind].pop(str(item.obj["metadata"]["name"]), None)
            else:
                self.cache[kind][str(item.obj["metadata"]["name"])] = item.obj
            after = self.cache[kind]
        changed = {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}
        if kind in ("ConfigMap", "Secret"):
            for worker in self.workers.values():
                if any((kind, name) in worker.sources() for name in changed):
                    worker.refresh_volumes()
        elif kind == "Node":
            for name in changed:
                if name not in after and name in before:
                    self.registry.node_gone(name, str(before[name]["metadata"]["uid"]))
        elif kind == "Pod":
            seen = {str(o["metadata"]["uid"]) for o in [*before.values(), *after.values()]}
            live = {str(o["metadata"]["uid"]) for o in after.values()
                    if not o["metadata"].get("deletionTimestamp")}
            for worker in self.workers.values():
                # Deleted through the API (kubectl delete pod): stop it; the controller makes a new one.
                # A pod just created and not yet seen by the watch is not in `seen`.
                if worker.uid in seen and worker.uid not in live:
                    worker.stop(teardown=True)

    def _workloads(self) -> dict[str, Workload]:
        with self._lock:
            found = [workload_of(kind, obj) for kind in ("DaemonSet", "Deployment")
                     for obj in self.cache[kind].values() if not obj["metadata"].get("deletionTimestamp")]
        return {w.uid: w for w in found}

    def _publish_root_ca(self) -> None:
        """The `kube-root-ca.crt` ConfigMap that kube-controller-manager would publish: the default
        ServiceAccount token volume takes `ca.crt` from it."""
        if self.ca_file is None:
            return
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "kube-root-ca.crt", "namespace": NAMESPACE},
                "data": {"ca.crt": Path(self.ca_file).read_text()}}
        try:
            self.api.request("POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps", body)
        except KubeApiError as exc:
            if exc.code != CONFLICT:
                log.warning("kube-root-ca.crt not published: %s", exc)
        except StoreUnavailableError as exc:
            log.warning("kube-root-ca.crt not published: %s", exc)

    def _adopt(self) -> None:
        """Take over the pods a previous kubelet ran; stop those whose Pod is gone; delete our Pods that
        nothing runs (their state was lost)."""
        with self._lock:
            api_pods = {str(o["metadata"]["uid"]): o for o in self.cache["Pod"].values()}
        known = set()
        for record in self.ctx.pods.load_all():
            worker = PodWorker(self.ctx, record=record)
            self.workers[id(worker)] = worker
            known.add(record.uid)
            worker.start()
            pod = api_pods.get(record.uid)
            gone = pod is None or bool(pod["metadata"].get("deletionTimestamp"))
            if gone or record.node not in self.setup.node_ips:
                worker.stop(teardown=True)
        for uid, pod in api_pods.items():
            annotations = pod["metadata"].get("annotations") or {}
            if uid not in known and SLOT_ANNOTATION in annotations and pod["spec"].get("nodeName") in \
                    self.setup.node_ips:
                log.info("pod %s has no process here (state lost): deleting it", pod["metadata"]["name"])
                try:
                    self.api.request("DELETE", f"{PODS}/{pod['metadata']['name']}", {"gracePeriodSeconds": 0})
                except (KubeApiError, StoreUnavailableError) as exc:
                    log.warning("pod %s not deleted: %s", pod["metadata"]["name"], exc)

    def _reconcile(self) -> None:
        for key in [k for k, w in self.workers.items() if w.done.is_set()]:
            del self.workers[key]
        views = [PodView(key, w.workload_uid, w.slot, w.node, w.template_hash, w.available(),
                         w.stopping) for key, w in self.workers.items()]
        decided = plan(self._workloads(), self.registry.active(), views)
        for key in decided.stop:
            self.workers[key].stop(teardown=True)
        for workload, slot in decided.create:
            worker = PodWorker(self.ctx, body=pod_body(workload, slot),
                               slot=(workload.uid, slot.key, workload.template_hash))
            self.workers[id(worker)] = worker
            worker.start()



def setup_of(lab: str) -> KubeletSetup:
    """The kubelet's view of the running lab `lab` (its lab.json; `kubeconfig` names the admin's)."""
    info = load_lab(lab)
    manifest = info.paths.read_manifest() or {}
    kubeconfig = Path(manifest.get("kubeconfig") or info.paths.root / "kube" / "admin.kubeconfig")
    if not kubeconfig.exists():
        raise LabError(f"lab {lab}: no kubeconfig at {kubeconfig}; "
                       "is it a lab with --control-plane kubernetes?")
    return KubeletSetup(
        root=info.paths.root, marker=info.paths.marker, node_ips=dict(info.node_ips),
        netns={node: info.netns_of(node) for node in info.nodes}, kubeconfig=kubeconfig,
    )
