"""A whole lab for a test: a unique name, and `lab_down` whatever happens."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

from ciphermesh.config import load_values
from ciphermesh.lab import netns
from ciphermesh.lab.cluster import LabInfo, lab_up
from ciphermesh.lab.down import lab_down
from tests.support.names import unique_lab

IPSEC = ("encryption.enabled=true", "encryption.type=ipsec")


def _quiet(_message: str) -> None:
    """Progress that says nothing."""



@contextlib.contextmanager
def running_lab(prefix: str, nodes: int, sets: tuple[str, ...] = ()) -> Iterator[LabInfo]:
    """A lab that is up for the block and removed after it, also when `lab up` or the test fails."""
    name = unique_lab(prefix)
    try:
        yield lab_up(name, nodes, load_values(sets=sets), _quiet)
    finally:
        lab_down(name, _quiet)
    assert not netns.lab_residue(name)


def ciphermesh(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """The real command line, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "ciphermesh", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
