"""One real kube-apiserver per test module of tests/install; each test removes its release itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.kube import KubeCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    cluster = KubeCluster(tmp_path_factory.mktemp("kube"))
    try:
        yield cluster
    finally:
        cluster.close()
