"""A real etcd in a temp dir (fixtures in tests/conftest.py; tests/support/proxy.py cuts clients off)."""

from __future__ import annotations

from pathlib import Path

from ciphermesh.store.etcd.process import EtcdInfo, start_etcd, stop_etcd


class EtcdFixture:
    """A running etcd for one test; `restart` keeps its data and its socket."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.info: EtcdInfo = start_etcd(state_dir)

    @property
    def url(self) -> str:
        return self.info.client_url

    def stop(self) -> None:
        stop_etcd(self.state_dir)

    def start(self) -> None:
        self.info = start_etcd(self.state_dir)

    def restart(self) -> None:
        self.stop()
        self.start()
