"""The lab's nodes in the API: a `v1` Node per node namespace and its `kube-node-lease` Lease, renewed
as the kubelet renews it (every 10 s, 40 s duration). A Node deleted by hand is remembered, so it is
not registered again, not even by a restarted kubelet: its pods stop and its peers drop it."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from ciphermesh.lab.state import write_private
from ciphermesh.store.errors import StoreUnavailableError
from ciphermesh.store.kubernetes.client import CONFLICT, NOT_FOUND, JSONObject, KubeApiError, KubeClient

log = logging.getLogger(__name__)
LEASE_DURATION = 40
RENEW_INTERVAL = 10.0
STATUS_INTERVAL = 60.0
NODES = "/api/v1/nodes"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
MERGE = "application/merge-patch+json"
READY_MESSAGE = "lab kubelet: plays the kubelet for ciphermesh's workloads only"


def micro_time(at: datetime.datetime | None = None) -> str:
    """A MicroTime as the API writes it."""
    return (at or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_status(name: str, ip: str) -> JSONObject:
    now = micro_time()[:19] + "Z"
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": READY_MESSAGE,
             "lastHeartbeatTime": now, "lastTransitionTime": now}
    return {
        "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
        "conditions": [ready],
        "nodeInfo": {"kubeletVersion": "lab", "operatingSystem": "linux", "architecture": "amd64",
                     "containerRuntimeVersion": "lab://processes", "kernelVersion": "", "osImage": "",
                     "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
    }


class NodeRegistry:
    """Registers the nodes and keeps their Leases fresh in a thread; knows which nodes are active."""

    def __init__(self, api: KubeClient, node_ips: dict[str, str], state_dir: Path) -> None:
        self.api = api
        self.node_ips = node_ips
        self._file = state_dir / "nodes.json"
        self._lock = threading.Lock()
        remembered = self._read()
        self._deleted = set(remembered.get("deleted") or [])
        # Nodes an earlier kubelet registered: one missing now was deleted while no kubelet ran.
        self._known = dict(remembered.get("registered") or {})
        self._registered: dict[str, str] = {}  # name -> uid
        self._status_at: dict[str, float] = {}
        self._stopped = threading.Event()
        # Set once every node is registered (or known deleted): until then a node's absence says nothing.
        self.first_round = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-leases", daemon=True)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self._file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self) -> None:
        """Called with the lock held."""
        state = {"registered": {**self._known, **self._registered}, "deleted": sorted(self._deleted)}
        write_private(self._file, json.dumps(state) + "\n")

    def active(self) -> list[str]:
        """The registered nodes not deleted, in the lab's order."""
        with self._lock:
            return [n for n in self.node_ips if n in self._registered and n not in self._deleted]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def node_gone(self, name: str, uid: str) -> None:
        """The Node `name` (of uid `uid`) was deleted: remember it, drop its Lease."""
        with self._lock:
            if self._registered.get(name) != uid or name in self._deleted:
                return
            self._deleted.add(name)
            self._save()
        log.info("node %s was deleted: its pods stop and it is not registered again", name)
        # A Lease left behind names a Node that is gone (no garbage collector runs in the lab to drop it).
        with contextlib.suppress(KubeApiError, StoreUnavailableError):
            self.api.request("DELETE", f"{LEASES}/{name}")

    def _run(self) -> None:
        while not self._stopped.is_set():
            for name, ip in self.node_ips.items():
                with self._lock:
                    if name in self._deleted:
                        continue
                try:
                    self._heartbeat(name, ip)
                except (KubeApiError, StoreUnavailableError) as exc:
                    log.warning("node %s: %s", name, exc)
            with self._lock:
                pending = [n for n in self.node_ips if n not in self._registered and n not in self._deleted]
            if not pending:
                self.first_round.set()
            # Nodes not registered yet (the API server starting, say) are tried again soon.
            self._stopped.wait(1.0 if pending else RENEW_INTERVAL)

    def _heartbeat(self, name: str, ip: str) -> None:
        uid = self._registered.get(name) or self._register(name, ip)
        if uid is None:
            return
        self._renew_lease(name, uid)
        due = self._status_at.get(name, 0.0)
        if time.monotonic() >= due:
            self.api.request("PATCH", f"{NODES}/{name}/status", {"status": node_status(name, ip)},
                             content_type=MERGE)
            self._status_at[name] = time.monotonic() + STATUS_INTERVAL

    def _register(self, name: str, ip: str) -> str | None:
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}}}
        try:
            node = self.api.request("GET", f"{NODES}/{name}")
        except KubeApiError as exc:
            if exc.code != NOT_FOUND:
                raise
            if name in self._known:
                self._forget(name)
                return None
            try:
                node = self.api.request("POST", NODES, body)
            except KubeApiError as exc:
                if exc.code != CONFLICT:
                    raise
                node = self.api.request("GET", f"{NODES}/{name}")
        uid = str(node["metadata"]["uid"])
        self.api.request("PATCH", f"{NODES}/{name}/status", {"status": node_status(name, ip)},
                         content_type=MERGE)
        self._status_at[name] = time.monotonic() + STATUS_INTERVAL
        with self._lock:
            if name in self._deleted:
                return None
            self._registered[name] = uid
            self._save()
        log.info("node %s registered (InternalIP %s)", name, ip)
        return uid

    def _forget(self, name: str) -> None:
        with self._lock:
            self._deleted.add(name)
            self._save()
        log.info("node %s was deleted while no kubelet ran: it is not registered again", name)

    def _renew_lease(self, name: str, uid: str) -> None:
        spec = {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION, "renewTime": micro_time()}
        try:
            self.api.request("PATCH", f"{LEASES}/{name}", {"spec": spec}, content_type=MERGE)
        except KubeApiError as exc:
            if exc.code != NOT_FOUND:
                raise
            with self._lock:
                if name in self._deleted:
                    return
            owner = {"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}
            self.api.request("POST", LEASES, {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease", "ownerReferences": [owner]},
                "spec": spec,
            })

