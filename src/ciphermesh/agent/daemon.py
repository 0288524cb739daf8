"""The agent of one node: registers, follows the cluster, plans and applies the datapath, reports."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, ip_network
from pathlib import Path
from typing import Any

from ciphermesh.agent.engine_choice import USERSPACE, EngineChoice
from ciphermesh.agent.health import HEALTH_PORT, HealthProber, HealthServer
from ciphermesh.agent.key_file import mounted_key_file
from ciphermesh.agent.keyring import KeyRing
from ciphermesh.agent.modes import agent_mode, node_encryption, strict_cidr, strict_guard
from ciphermesh.agent.plan import plan
from ciphermesh.agent.status_socket import StatusSocketServer
from ciphermesh.agent.watch import ClusterView
from ciphermesh.agent.wireguard_key import load_or_create_private_key
from ciphermesh.config import Values
from ciphermesh.datapath.desired import DesiredDatapath, Mode
from ciphermesh.datapath.face import NodeDatapath, PodCIDRConflictError, StrictGuard, kernel_boot_id
from ciphermesh.store.base import NodeRegistration
from ciphermesh.store.errors import PodCIDRTimeoutError, StoreError
from ciphermesh.store.kubernetes.backend import KubernetesBackend
from ciphermesh.store.model import WG_PUB_KEY_ANNOTATION, Node
from ciphermesh.store.store import Store

log = logging.getLogger(__name__)

RESYNC_SECONDS = 5.0
DEFAULT_STATE_DIR = Path("/var/run/cilium/state")


@dataclass(frozen=True)
class AgentOptions:
    """Who this agent is and where it reports."""

    node: str
    node_ip: IPv4Address
    values: Values
    status_socket: Path
    probe_interval: float = 15.0
    # Where the WireGuard private key lives across restarts (Cilium: /var/run/cilium/state).
    state_dir: Path = DEFAULT_STATE_DIR
    engine: EngineChoice = USERSPACE
    # Where the settings came from (the ConfigMap, then CiliumNodeConfigs), and the per-node overrides
    # refused at start: reported among the errors for as long as the agent runs with the cluster's value.
    config_sources: tuple[str, ...] = ()
    config_problems: tuple[str, ...] = ()


class Agent:
    """One node's control loop; `run` returns once `stop` is set and everything it started is stopped."""

    def __init__(self, options: AgentOptions, store: Store, ipr: Any) -> None:
        self.options = options
        self.store = store
        self.ipr = ipr
        # Userspace SAs die with the agent, kernel SAs with the kernel: the boot ID follows their life.
        self.boot_id = kernel_boot_id() if options.engine.kind == "kernel" else str(uuid.uuid4())
        self.mode: Mode = agent_mode(options.values)
        self.node_encryption = node_encryption(options.values)
        self.strict_cidr = strict_cidr(options.values)
        self._applied: DesiredDatapath | None = None
        self._applied_at = 0.0
        self.phase = "starting"
        self.problems: list[str] = []
        self.waiting: tuple[str, ...] = ()
        self.keyring = KeyRing(options.values.seconds("encryption.ipsec.keyRotationDuration"))
        self.pod_cidr: IPv4Network | None = None
        self.router: IPv4Address | None = None
        self.started_at = time.time()
        self.last_apply: float | None = None
        self._registration: NodeRegistration | None = None
        self._view = ClusterView(store, options.values.text("encryption.ipsec.secretName"),
                                 mounted_key_file(store, options.values, self.mode),
                                 ipsec=self.mode == "ipsec")
        key = load_or_create_private_key(options.state_dir) if self.mode == "wireguard" else None
        # Published with the registration, before the engine exists.
        self.public_key = None if key is None else key.public_key().to_base64()
        self.datapath = NodeDatapath(ipr, node_ip=options.node_ip, mode=self.mode,
                                     engine_kind=options.engine.kind,
                                     node_encryption=self.node_encryption, private_key=key)
        self.mtus = self.datapath.mtus
        self._health_server: HealthServer | None = None
        self._prober: HealthProber | None = None
        self._status = StatusSocketServer(options.status_socket, self.status,
                                          revealed=lambda: self.status(reveal=True))

    def run(self, stop: threading.Event) -> None:
        self._status.start()
        # The loop sleeps on `changed`: a stop (SIGTERM) must wake it now, not at the next resync.
        threading.Thread(target=self._wake_on, args=(stop,), name="stop-waker", daemon=True).start()
        try:
            self._start(stop)
            while not stop.is_set():
                self._view.changed.wait(self._next_wakeup())
                self._view.changed.clear()
                if stop.is_set():
                    break
                self.reconcile()
        finally:
            self._shutdown()

    def _wake_on(self, stop: threading.Event) -> None:
        stop.wait()
        self._view.changed.set()

    def _next_wakeup(self) -> float:
        """Seconds until the periodic resync, or sooner when a previous key's grace period ends."""
        expiry = self.keyring.next_expiry()
        if expiry is None:
            return RESYNC_SECONDS
        return max(0.05, min(RESYNC_SECONDS, expiry - time.monotonic()))

    def _start(self, stop: threading.Event) -> None:
        # The public key is published with the registration, before the node is ever ready (as Cilium).
        annotations = {WG_PUB_KEY_ANNOTATION: self.public_key} if self.public_key is not None else {}
        node = Node(name=self.options.node, node_ip=str(self.options.node_ip), boot_id=self.boot_id,
                    annotations=annotations)
        self._registration = self.store.register_node(node)
        self.phase = "waiting for a pod CIDR from the operator"
        cidrs = self._wait_pod_cidrs(stop)
        if not cidrs:
            return
        self.pod_cidr = next(c for c in (ip_network(t) for t in cidrs) if isinstance(c, IPv4Network))
        self.phase = "configuring links"
        try:
            self.router = self.datapath.start(self.pod_cidr)
        except PodCIDRConflictError as exc:
            self.problems, self.phase, self.pod_cidr = [str(exc)], "refused its pod CIDR", None
            return
        router = str(self.router)
        self._registration.update(
            lambda n: replace(n, router_ip=router, health_endpoint=f"{router}:{HEALTH_PORT}")
        )
        self._health_server = HealthServer(router)
        self._health_server.start()
        self._view.start()
        self.phase = "waiting for the cluster's state"
        while not stop.is_set() and not self._view.wait_synced(1.0):
            pass
        self._prober = HealthProber(self._peer_endpoints, source=router, interval=self.options.probe_interval)
        self._prober.start()
        self.reconcile()

    def _wait_pod_cidrs(self, stop: threading.Event) -> tuple[str, ...]:
        assert self._registration is not None
        while not stop.is_set():
            try:
                return self._registration.wait_for_pod_cidrs(2.0, stop)
            except PodCIDRTimeoutError as exc:
                # The operator's words (e.g. an exhausted pool) are the status until a CIDR comes.
                self.problems = [str(exc)]
        return ()

    def _peer_endpoints(self) -> list[tuple[str, str]]:
        return [
            (node.name, node.router_ip)
            for node in self._view.nodes()
            if node.name != self.options.node and node.router_ip is not None
        ]

    def reconcile(self) -> None:
        """Plan from the current view and apply; a failure is reported and retried on the next pass."""
        registration = self._registration
        if registration is None or self.router is None or self.pod_cidr is None:
            return
        if self.mode == "ipsec":
            secret = self._view.secret()
            now = time.monotonic()
            self.keyring.update(None if secret is None else secret.keys, now)
            self.keyring.expire(now)
        local = registration.node
        try:
            desired = plan(local, self._view.nodes(), mode=self.mode, keys=self.keyring.keys,
                           current_key_id=self.keyring.current_id, node_encryption=self.node_encryption)
            # Most store events (other nodes' status, health) change nothing here: the kernel is read
            # and written only when the plan changed, and at least every RESYNC_SECONDS to undo drift.
            resync = time.monotonic() - self._applied_at >= RESYNC_SECONDS
            if desired != self._applied or resync:
                previous = None if resync else self._applied
                self._applied = None  # until this pass succeeds, nothing is known to be applied
                self.datapath.apply(desired, previous, self._wanted_guard())
                self._applied = desired
                if previous is None:
                    self._applied_at = time.monotonic()
        except Exception as exc:
            log.exception("apply failed")
            self.problems = [f"apply: {type(exc).__name__}: {exc}"]
            self.phase = "degraded"
            return
        self.waiting = desired.waiting
        self.phase = "ready"
        self.last_apply = time.time()
        try:
            self._publish(registration)
        except StoreError as exc:
            # The datapath holds while the store is away (a restart): say so, publish on the next pass.
            log.warning("cannot publish this node's state: %s", exc)
            self.problems = [f"store: {exc}"]
            return
        self.problems = []

    def _wanted_guard(self) -> StrictGuard | None:
        peers = [IPv4Address(n.node_ip) for n in self._view.nodes() if n.name != self.options.node]
        return strict_guard(self.options.values, self.options.node_ip, peers)

    def _publish(self, registration: NodeRegistration) -> None:
        """Publish the key ID (only once its inbound SAs are in place) and a summary of the state."""
        key_id = self.keyring.current_id if self.mode == "ipsec" else None
        summary = self._encryption_summary()
        errors = tuple(self._errors())
        node = registration.node
        published = (node.key_id, dict(node.encryption), node.agent, node.errors)
        annotations = self._own_annotations()
        if published != (key_id, summary, "ready", errors) or annotations is not None:
            registration.update(lambda n: replace(
                n, key_id=key_id, encryption=summary, agent="ready", errors=errors,
                annotations=n.annotations if annotations is None else {**n.annotations, **annotations},
            ))

    def _own_annotations(self) -> dict[str, str] | None:
        """Our WireGuard public key, if the store's record of this node lost or changed it (else None).

        Peers hold a node without its key (fail closed); a record edited by hand must not keep it so.
        """
        mine = self.public_key
        if mine is None:
            return None
        stored = next((n for n in self._view.nodes() if n.name == self.options.node), None)
        if stored is None or stored.wg_pub_key == mine:
            return None
        log.warning("the store's record of %s has no or another WireGuard public key; publishing ours again",
                    self.options.node)
        return {WG_PUB_KEY_ANNOTATION: mine}

    def _encryption_summary(self) -> dict[str, Any]:
        ipsec = self.mode == "ipsec"
        return {"mode": self.mode, "engine": self.datapath.engine_kind,
                "engineReason": self.options.engine.reason,
                "keyID": self.keyring.current_id if ipsec else None,
                "rotationInProgress": ipsec and self.keyring.rotating,
                "nodeEncryption": self.node_encryption}

    def _errors(self) -> list[str]:
        errors = [*self.options.config_problems, *self.problems, *self._view.errors()]
        if self.mode == "ipsec" and self.keyring.error:
            errors.append(self.keyring.error)
        if self._registration is not None and self._registration.last_error:
            errors.append(f"store: {self._registration.last_error}")
        return [e.replace("\n", " ")[:500] for e in errors]

    def status(self, *, reveal: bool = False) -> dict[str, Any]:
        """What `ciphermesh status` and `encryption status` show for this node; SA keys only with `reveal`."""
        health = [r.as_dict() for r in self._prober.results()] if self._prober else []
        engine = self.datapath.engine_status(reveal=reveal)
        peers = [n for n in self._view.nodes() if n.name != self.options.node]
        return {
            "name": self.options.node,
            "nodeIP": str(self.options.node_ip),
            "routerIP": None if self.router is None else str(self.router),
            "podCIDRs": [] if self.pod_cidr is None else [str(self.pod_cidr)],
            "bootID": self.boot_id,
            "agent": self.phase,
            "startedAt": self.started_at,
            "lastApply": self.last_apply,
            "configSources": list(self.options.config_sources),
            "mtu": {"device": self.mtus.device, "vxlan": self.mtus.vxlan, "pod": self.mtus.pod},
            "encryption": {**self._encryption_summary(), "engineStatus": engine,
                           "strictMode": self.datapath.strict_status(self.strict_cidr)},
            "health": {
                "reachable": sum(1 for h in health if h["reachable"]),
                "probed": len(health),
                "peers": health,
                "expectedPeers": len(peers),
            },
            "waiting": list(self.waiting),
            "errors": self._errors(),
        }

    def _shutdown(self) -> None:
        self.phase = "stopping"
        for stoppable in (self._prober, self._health_server):
            if stoppable is not None:
                stoppable.stop()
        self._view.stop()
        self.datapath.close()
        if self._registration is not None:
            # On Kubernetes the agent has no delete (least privilege; Cilium's too keeps its CiliumNode): the
            # Lease lapses within its TTL and peers drop the node then; the operator collects the rest.
            self._registration.close(revoke=not isinstance(self.store.backend, KubernetesBackend))
        self._status.stop()
