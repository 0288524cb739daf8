"""A pod worker (as the kubelet has one per pod): creates the Pod object, keeps its volumes current,
runs each container as a process inside the node's network namespace and restarts it with backoff,
reports the Pod's status, and on `stop` kills the containers and deletes the Pod."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ciphermesh.lab import netns
from ciphermesh.lab.kubelet.container import (
    ContainerSpecError,
    capabilities,
    command_line,
    container_env,
    setpriv_prefix,
)
from ciphermesh.lab.kubelet.nodes import MERGE, micro_time
from ciphermesh.lab.kubelet.podstate import PodRecord, PodStore
from ciphermesh.lab.kubelet.token import DEFAULT_EXPIRATION, Token, request_token
from ciphermesh.lab.kubelet.volumes import JSONObject, Lookup, PodVolumes, VolumeError
from ciphermesh.lab.kubelet.volumes import sources as volume_sources
from ciphermesh.lab.kubelet.workloads import NAMESPACE
from ciphermesh.lab.processes import pid_alive, read_pidfile, start_daemon
from ciphermesh.lab.state import write_private
from ciphermesh.store.errors import StoreUnavailableError
from ciphermesh.store.kubernetes.client import NOT_FOUND, KubeApiError, KubeClient

log = logging.getLogger(__name__)
# Restart backoff: 1 s doubling to 60 s, reset after 60 s of running. The kubelet's is 10 s to 5 min
# (reset after 10 min); a lab's faults are shorter, so is its patience.
BACKOFF_BASE, BACKOFF_MAX, BACKOFF_RESET = 1.0, 60.0, 60.0
# A container counts as available once it has run this long (no readiness probes are run).
AVAILABLE_AFTER = 1.0
# terminationGracePeriodSeconds, but at most this (the default 30 s is long for a lab).
MAX_GRACE = 10.0
_TICK = 0.5
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"


@dataclass(frozen=True)
class KubeletContext:
    """What every pod worker shares: the API, the object cache, the lab's nodes and files."""

    api: KubeClient
    lookup: Lookup
    pods: PodStore
    logs: Path
    node_root: Callable[[str], Path]
    netns_of: Callable[[str], str]
    node_ip: Callable[[str], str]
    extra_env: dict[str, str]
    marker: str


class _Container:
    def __init__(self, spec: JSONObject) -> None:
        self.spec = spec
        self.name = str(spec["name"])
        self.started_at: float | None = None
        self.started_wall = ""
        self.next_start = 0.0
        self.backoff = BACKOFF_BASE
        self.last_exit: int | None = None


class PodWorker:
    """One pod's lifecycle in a thread; `body` (to create) or `record` (adopted) says which pod."""

    def __init__(self, ctx: KubeletContext, *, record: PodRecord | None = None,
                 body: JSONObject | None = None, slot: tuple[str, str, str] | None = None) -> None:
        self.ctx = ctx
        self.record = record
        self._body = body
        self._slot = slot  # workload uid, slot key, template hash
        self.workload_uid = record.workload_uid if record else (slot or ("", "", ""))[0]
        self.slot = record.slot if record else (slot or ("", "", ""))[1]
        self.template_hash = record.template_hash if record else (slot or ("", "", ""))[2]
        self.node = record.node if record else str((body or {})["spec"]["nodeName"])
        self._containers: list[_Container] = []
        self._tokens: dict[tuple[str, int], Token] = {}
        self._stop = threading.Event()
        self._teardown = False
        self._wake = threading.Event()
        self._volumes_dirty = True
        self._problem: str | None = None
        self._reported: str | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pod {self.node}/{self.slot}", daemon=True)

    @property
    def uid(self) -> str | None:
        return self.record.uid if self.record else None

    def start(self) -> None:
        self._thread.start()

    def refresh_volumes(self) -> None:
        """A ConfigMap or Secret changed: write the volumes again now."""
        self._volumes_dirty = True
        self._wake.set()

    def stop(self, teardown: bool) -> None:
        """End the worker; with `teardown` its containers are killed and the Pod deleted."""
        self._teardown = self._teardown or teardown
        self._stop.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def available(self) -> bool:
        now = time.monotonic()
        return bool(self._containers) and all(
            c.started_at is not None and now - c.started_at >= AVAILABLE_AFTER for c in self._containers)

    def sources(self) -> set[tuple[str, str]]:
        """The ConfigMaps and Secrets its volumes show (env is read once, at start, as Kubernetes does)."""
        if self.record is None:
            return set()
        return {s for v in self.record.pod["spec"].get("volumes") or [] for s in volume_sources(v)}

    def _run(self) -> None:
        try:
            if self.record is None and not self._create():
                return
            assert self.record is not None
            self._containers = [_Container(c) for c in self.record.pod["spec"].get("containers") or []]
            self._adopt()
            while not self._stop.is_set():
                self._step()
                self._wake.wait(_TICK)
                self._wake.clear()
            if self._teardown:
                self._kill_all()
                self._delete_pod()
        except Exception:  # a worker must not vanish silently: the daemon's log says why
            log.exception("pod worker %s/%s failed", self.node, self.slot)
        finally:
            self.done.set()

    def _create(self) -> bool:
        assert self._body is not None and self._slot is not None
        while not self._stop.is_set():
            try:
                pod = self.ctx.api.request("POST", PODS, self._body)
            except (KubeApiError, StoreUnavailableError) as exc:
                log.warning("cannot create the pod for %s on %s: %s", self._body["metadata"]["generateName"],
                            self.node, exc)
                self._stop.wait(2.0)
                continue
            self.record = PodRecord(pod, *self._slot)
            self.ctx.pods.save(self.record)
            log.info("pod %s created on %s", self.record.name, self.node)
            return True
        return False

    def _adopt(self) -> None:
        assert self.record is not None
        for container in self._containers:
            pid = read_pidfile(self.ctx.pods.pidfile(self.record.uid, container.name))
            if pid is not None:
                container.started_at = time.monotonic() - AVAILABLE_AFTER
                container.started_wall = micro_time()[:19] + "Z"
                log.info("pod %s: container %s adopted (pid %d)", self.record.name, container.name, pid)

    def _pod_view(self) -> JSONObject:
        """The pod as fieldRefs see it: a hostNetwork pod's IPs are its node's."""
        assert self.record is not None
        ip = self.ctx.node_ip(self.node)
        return {**self.record.pod, "status": {"hostIP": ip, "podIP": ip}}

    def _token(self, source: JSONObject) -> str:
        assert self.record is not None
        key = (str(source.get("audience") or ""), int(source.get("expirationSeconds") or DEFAULT_EXPIRATION))
        token = self._tokens.get(key)
        if token is None or token.due():
            token = request_token(
                self.ctx.api, namespace=NAMESPACE,
                service_account=str(self.record.pod["spec"].get("serviceAccountName") or "default"),
                pod=(self.record.name, self.record.uid), expiration=key[1], audience=key[0] or None)
            self._tokens[key] = token
        return token.value

    def _step(self) -> None:
        assert self.record is not None
        pod_dir = self.ctx.pods.dir(self.record.uid)
        volumes = PodVolumes(self._pod_view(), pod_dir, self.ctx.node_root(self.node))
        try:
            if self._volumes_dirty or any(t.due() for t in self._tokens.values()):
                self._volumes_dirty = False
                changed = volumes.sync(self.ctx.lookup, self._token)
                if changed:
                    log.info("pod %s: volumes %s updated", self.record.name, ", ".join(changed))
            for container in self._containers:
                self._keep_running(container, volumes)
            self._problem = None
        except (VolumeError, ContainerSpecError, OSError) as exc:
            self._volumes_dirty = True
            self._problem = str(exc)
        except (KubeApiError, StoreUnavailableError) as exc:
            self._volumes_dirty = True
            self._problem = f"API: {exc}"
        self._report()

    def _keep_running(self, container: _Container, volumes: PodVolumes) -> None:
        assert self.record is not None
        pidfile = self.ctx.pods.pidfile(self.record.uid, container.name)
        pid = read_pidfile(pidfile)
        if pid is not None:
            return
        now = time.monotonic()
        if container.started_at is not None:
            container.last_exit = _reap(pidfile)
            ran = now - container.started_at
            healthy = ran >= BACKOFF_RESET
            container.backoff = BACKOFF_BASE if healthy else min(container.backoff * 2, BACKOFF_MAX)
            container.next_start = now + (0.0 if healthy else container.backoff)
            container.started_at = None
            self.record.restarts[container.name] = self.record.restarts.get(container.name, 0) + 1
            self.ctx.pods.save(self.record)
            log.info("pod %s: container %s exited (%s); restarting in %.0f s", self.record.name,
                     container.name, container.last_exit, container.next_start - now)
        if now < container.next_start:
            return
        self._launch(container, volumes, pidfile)

    def _launch(self, container: _Container, volumes: PodVolumes, pidfile: Path) -> None:
        assert self.record is not None
        pod = self._pod_view()
        env = container_env(pod, container.spec, self.ctx.lookup, {**self.ctx.extra_env})
        context = container.spec.get("securityContext") or {}
        argv = setpriv_prefix(capabilities(container.spec), context.get("allowPrivilegeEscalation") is False)
        spec = {
            "mounts": [{"source": m.source, "target": m.target, "readOnly": m.read_only}
                       for m in volumes.mounts(container.spec)],
            "workingDir": container.spec.get("workingDir"),
            "argv": [*argv, *command_line(container.spec, env)],
            "env": env,
        }
        spec_file = self.ctx.pods.dir(self.record.uid) / "containers" / f"{container.name}.json"
        write_private(spec_file, json.dumps(spec))
        init = [sys.executable, "-m", "ciphermesh.lab.kubelet.container_init", str(spec_file)]
        command = netns.command(self.ctx.netns_of(self.node),
                                ["unshare", "--mount", "--propagation", "private", "--", *init])
        base_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        pid = start_daemon(command, pidfile=pidfile, log=self.ctx.logs / f"{self.record.name}.log",
                           env=base_env, marker=self.ctx.marker)
        container.started_at = time.monotonic()
        container.started_wall = micro_time()[:19] + "Z"
        log.info("pod %s: container %s started (pid %d)", self.record.name, container.name, pid)

    def _report(self) -> None:
        """The Pod's status in the API when it changed (phase, readiness, restarts)."""
        assert self.record is not None
        ip = self.ctx.node_ip(self.node)
        statuses = []
        for c in self._containers:
            running = c.started_at is not None
            reason = "CrashLoopBackOff" if c.last_exit is not None else "ContainerCreating"
            waiting = {"reason": reason, **({"message": self._problem} if self._problem else {})}
            state = {"running": {"startedAt": c.started_wall}} if running else {"waiting": waiting}
            statuses.append({"name": c.name, "image": str(c.spec.get("image") or "lab"), "imageID": "",
                             "ready": running, "started": running, "state": state,
                             "restartCount": self.record.restarts.get(c.name, 0)})
        ready = "True" if all(s["ready"] for s in statuses) else "False"
        conditions = [{"type": t, "status": ready if t in ("Ready", "ContainersReady") else "True"}
                      for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
        status = {"phase": "Running" if any(s["started"] for s in statuses) else "Pending",
                  "hostIP": ip, "hostIPs": [{"ip": ip}], "podIP": ip, "podIPs": [{"ip": ip}],
                  "conditions": conditions, "containerStatuses": statuses}
        text = json.dumps(status, sort_keys=True)
        if text == self._reported:
            return
        try:
            self.ctx.api.request("PATCH", f"{PODS}/{self.record.name}/status", {"status": status},
                                 content_type=MERGE)
            self._reported = text
        except (KubeApiError, StoreUnavailableError) as exc:
            log.warning("pod %s: status not reported: %s", self.record.name, exc)

    def _kill_all(self) -> None:
        assert self.record is not None
        grace = min(float(self.record.pod["spec"].get("terminationGracePeriodSeconds", 30)), MAX_GRACE)
        pids = [p for c in self._containers
                if (p := read_pidfile(self.ctx.pods.pidfile(self.record.uid, c.name))) is not None]
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, sig)  # the container's whole process group (its own session)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(_group_alive(p) for p in pids):
                time.sleep(0.05)
                for c in self._containers:
                    _reap(self.ctx.pods.pidfile(self.record.uid, c.name))
            if not any(_group_alive(p) for p in pids):
                break
        log.info("pod %s: containers stopped", self.record.name)

    def _delete_pod(self) -> None:
        assert self.record is not None
        try:
            self.ctx.api.request("DELETE", f"{PODS}/{self.record.name}",
                                 {"gracePeriodSeconds": 0, "preconditions": {"uid": self.record.uid}})
        except KubeApiError as exc:
            if exc.code not in (NOT_FOUND, 409):
                log.warning("pod %s: not deleted: %s", self.record.name, exc)
        except StoreUnavailableError as exc:
            log.warning("pod %s: not deleted: %s", self.record.name, exc)
        self.ctx.pods.remove(self.record.uid)
        log.info("pod %s deleted", self.record.name)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A group of zombies only is gone for our purposes.
    return pid_alive(pgid) or _other_members(pgid)


def _other_members(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _reap(pidfile: Path) -> int | None:
    """The exit status of the container's process if it was our child (None for an adopted one)."""
    try:
        pid = int(pidfile.read_text().split()[0])
        done, status = os.waitpid(pid, os.WNOHANG)
    except (OSError, ValueError, IndexError):
        return None
    return os.waitstatus_to_exitcode(status) if done else None
