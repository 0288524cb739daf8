"""The backends the store contract suite runs against, each behind one small harness.

A harness starts a real backend for one test, opens `Store`s on it, and does to it what the suite needs
done behind the store's back: restart it, cut clients off, lose watch history, write bad records.
A new backend adds a harness here and a name to `BACKENDS`; the suite stays unchanged.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ciphermesh.store.etcd.backend import EtcdBackend
from ciphermesh.store.etcd.client import EtcdClient
from ciphermesh.store.kubernetes.backend import KubernetesBackend
from ciphermesh.store.kubernetes.client import NOT_FOUND, KubeApiError, KubeClient, KubeConfig
from ciphermesh.store.kubernetes.objects import CILIUM_NODES, secrets
from ciphermesh.store.store import Store
from tests.support.etcd import EtcdFixture
from tests.support.kube import KubeCluster
from tests.support.proxy import CuttableProxy, loopback_upstream

CLUSTER = "cm"


class StoreHarness(Protocol):
    name: str

    def open(self, *, breakable: bool = False, timeout: float = 5.0) -> Store:
        """A store on the backend; `breakable` ones lose their connections on `cut`."""

    def cut(self) -> None:
        """Cut every breakable store off (connections dropped, new ones refused) until `restore`."""

    def restore(self) -> None: ...

    def restart(self) -> None:
        """Stop the backend and start it again with its data."""

    def stop(self) -> None: ...

    def expire_history(self) -> None:
        """Forget the change history, so a watch that was cut off must list again."""

    def write_raw_secret(self, name: str, namespace: str, data: bytes) -> None:
        """Write a key secret's bytes directly, as `kubectl edit` or `etcdctl put` would."""

    def write_malformed_node(self, name: str) -> None:
        """Write a node record that is not a valid node, directly."""

    def close(self) -> None: ...


class EtcdHarness:
    """A real etcd started for the test (Debian's etcd-server), with a TCP proxy for breakable stores."""

    name = "etcd"

    def __init__(self, state_dir: Path, proxy_factory: Callable[[str], CuttableProxy]) -> None:
        self._etcd = EtcdFixture(state_dir)
        self._proxy = proxy_factory(self._etcd.url)
        self._raw = EtcdClient(self._etcd.url)
        self._stores: list[Store] = []

    def open(self, *, breakable: bool = False, timeout: float = 5.0) -> Store:
        url = self._proxy.url if breakable else self._etcd.url
        store = Store(EtcdBackend.connect(url, CLUSTER, timeout=timeout))
        self._stores.append(store)
        return store

    def cut(self) -> None:
        self._proxy.cut()

    def restore(self) -> None:
        self._proxy.restore()

    def restart(self) -> None:
        self._etcd.restart()

    def stop(self) -> None:
        self._etcd.stop()

    def expire_history(self) -> None:
        head = self._raw.put(b"/unrelated", b"x")
        self._raw.compact(head)

    def write_raw_secret(self, name: str, namespace: str, data: bytes) -> None:
        self._raw.put(f"/ciphermesh/{CLUSTER}/secrets/{namespace}/{name}".encode(), data)

    def write_malformed_node(self, name: str) -> None:
        self._raw.put(f"/ciphermesh/{CLUSTER}/nodes/{name}".encode(), b"{not json")

    def close(self) -> None:
        for store in self._stores:
            store.close()
        self._raw.close()
        self._etcd.stop()


class KubernetesHarness:
    """The pinned etcd and kube-apiserver started for the test, with a TCP proxy for breakable stores."""

    name = "kubernetes"

    def __init__(self, state_dir: Path) -> None:
        self._cluster = KubeCluster(state_dir)
        self._proxy = CuttableProxy(loopback_upstream(self._cluster.port))
        self._config = KubeConfig.from_file(self._cluster.kubeconfig)
        self._raw = KubeClient(self._config)
        self._stores: list[Store] = []
        # The suite writes a secret in namespace `ns`; on Kubernetes a namespace exists before its objects.
        self._raw.request("POST", "/api/v1/namespaces", {"metadata": {"name": "ns"}})

    def open(self, *, breakable: bool = False, timeout: float = 5.0) -> Store:
        config = self._config
        if breakable:
            config = dataclasses.replace(config, server=f"https://127.0.0.1:{self._proxy.port}")
        store = Store(KubernetesBackend(KubeClient(config, timeout=timeout), CLUSTER))
        self._stores.append(store)
        return store

    def cut(self) -> None:
        self._proxy.cut()

    def restore(self) -> None:
        self._proxy.restore()

    def restart(self) -> None:
        self._cluster.restart()

    def stop(self) -> None:
        self._cluster.stop()

    def expire_history(self) -> None:
        # The API server's watch cache would still serve the old versions: compact etcd and replace the
        # API server, whose new cache starts at the head, so a watch from before now gets 410 Gone.
        self._cluster.compact()
        self._cluster.restart()
        self._raw.close()

    def write_raw_secret(self, name: str, namespace: str, data: bytes) -> None:
        path = f"{secrets(namespace)}/{name}"
        current = self._raw.request("GET", path)
        current["data"] = {"keys": base64.b64encode(data).decode()}
        self._raw.request("PUT", path, current)

    def write_malformed_node(self, name: str) -> None:
        body = {"apiVersion": "cilium.io/v2", "kind": "CiliumNode", "metadata": {"name": name},
                "spec": {"addresses": [{"type": "InternalIP", "ip": "not-an-address"}], "bootid": "b"}}
        try:
            self._raw.request("DELETE", f"{CILIUM_NODES}/{name}")
        except KubeApiError as exc:
            if exc.code != NOT_FOUND:
                raise
        self._raw.request("POST", CILIUM_NODES, body)

    def close(self) -> None:
        for store in self._stores:
            store.close()
        self._raw.close()
        self._proxy.close()
        self._cluster.close()


BACKENDS = ("etcd", "kubernetes")


def start_harness(name: str, tmp_path: Path, proxy_factory: Callable[[str], CuttableProxy]) -> StoreHarness:
    if name == "etcd":
        return EtcdHarness(tmp_path / "etcd", proxy_factory)
    if name == "kubernetes":
        return KubernetesHarness(tmp_path / "kube")
    raise ValueError(f"no store harness named {name!r}")
