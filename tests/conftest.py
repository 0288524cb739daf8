"""Shared by every test: marks, the root check for netns tests, etcd fixtures, the leftover check."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import pytest

from ciphermesh.lab import netns
from ciphermesh.lab.processes import pids_in_netns
from ciphermesh.store.etcd.process import stop_etcd
from tests.support import names
from tests.support.etcd import EtcdFixture
from tests.support.kube import KubeCluster
from tests.support.proxy import CuttableProxy, unix_upstream


def pytest_configure(config: pytest.Config) -> None:
    for mark in (
        "interop: checked against an independent implementation (tshark, scapy, wireguard-go)",
        "slow: takes more than a few seconds",
        "netns: builds network namespaces (needs root)",
        "vm: boots a VM (a Debian kernel in QEMU, ciphermesh.lab.vm; needs root); skips where none can start",
    ):
        config.addinivalue_line("markers", mark)


@cache
def _netns_unavailable() -> str | None:
    """Why namespace tests cannot run here (checked once a session), or None."""
    if os.geteuid() != 0:
        return "netns tests need root (run as root, or deselect them with -m 'not netns')"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return None if listed.returncode == 0 else f"ip netns list fails: {listed.stderr.strip()}"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") and (reason := _netns_unavailable()):
        pytest.fail(reason, pytrace=False)


@pytest.fixture(autouse=True)
def _no_lab_left_behind() -> Iterator[None]:
    """After each test, no namespace (nor a process in one) named after a lab it got from `unique_lab`."""
    names.ISSUED.clear()
    yield
    labs = tuple(f"{lab}-" for lab in names.ISSUED)
    names.ISSUED.clear()
    if labs:
        left = {ns: pids_in_netns(ns) for ns in netns.names() if ns.startswith(labs)}
        assert not left, f"the test left namespaces (and pids) behind: {left}"


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdFixture]:
    """A real etcd for one test, stopped whatever happens."""
    fixture = EtcdFixture(tmp_path / "state")
    try:
        yield fixture
    finally:
        stop_etcd(fixture.state_dir)


@pytest.fixture
def proxy_factory() -> Iterator[Callable[[str], CuttableProxy]]:
    """Makes TCP proxies in front of an etcd `unix://` URL; all closed after the test."""
    proxies: list[CuttableProxy] = []

    def make(target: str) -> CuttableProxy:
        proxy = CuttableProxy(unix_upstream(target))
        proxies.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in proxies:
            proxy.close()


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeCluster]:
    """The pinned etcd and kube-apiserver for one test, stopped after it."""
    cluster = KubeCluster(tmp_path / "kube")
    try:
        yield cluster
    finally:
        cluster.close()
