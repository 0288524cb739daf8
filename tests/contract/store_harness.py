"""The backends the store contract suite runs against, each behind one small harness.

A harness starts a real backend for one test, opens `Store`s on it, and does to it what the suite needs
done behind the store's back: restart it, cut clients off, lose watch history, write bad records.
A new backend (Kubernetes next) adds a harness here and a name to `BACKENDS`; the suite stays unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ciphermesh.store.etcd.backend import EtcdBackend
from ciphermesh.store.etcd.client import EtcdClient
from ciphermesh.store.store import Store
from tests.support.etcd import EtcdFixture, TcpProxy

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

    def __init__(self, state_dir: Path, proxy_factory: Callable[[str], TcpProxy]) -> None:
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


BACKENDS = ("etcd",)


def start_harness(name: str, tmp_path: Path, proxy_factory: Callable[[str], TcpProxy]) -> StoreHarness:
    if name == "etcd":
        return EtcdHarness(tmp_path / "etcd", proxy_factory)
    raise ValueError(f"no store harness named {name!r}")
