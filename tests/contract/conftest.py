"""The store contract suite's one fixture: a running backend, once per backend in `BACKENDS`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from store_harness import BACKENDS, StoreHarness, start_harness

from etcd_support import TcpProxy, proxy_factory

__all__ = ["proxy_factory"]


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, proxy_factory: Callable[[str], TcpProxy]
) -> Iterator[StoreHarness]:
    harness = start_harness(request.param, tmp_path, proxy_factory)
    try:
        yield harness
    finally:
        harness.close()
