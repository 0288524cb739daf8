"""The store contract suite's one fixture: a running backend, once per backend in `BACKENDS`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.contract.store_harness import BACKENDS, StoreHarness, start_harness
from tests.support.proxy import CuttableProxy


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, proxy_factory: Callable[[str], CuttableProxy]
) -> Iterator[StoreHarness]:
    harness = start_harness(request.param, tmp_path, proxy_factory)
    try:
        yield harness
    finally:
        harness.close()
