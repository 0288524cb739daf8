"""What a lab benchmark scenario is: a path it builds, two namespaces across it, and who does its work."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Endpoints:
    """Where traffic goes for one path: client and server namespaces, and the server's address."""

    client_netns: str
    server_netns: str
    server_ip: str
    # Re-read before each transfer: the processes that carry this path's packets (both ends).
    tunnel_pids: Callable[[], list[int]] | None


class Scenario(Protocol):
    """A path to measure; `build` sets it up, yields its endpoints and removes everything on exit."""

    @property
    def name(self) -> str: ...

    @property
    def label(self) -> str: ...

    @property
    def tools(self) -> tuple[str, ...]: ...

    def build(self, progress: Progress) -> AbstractContextManager[Endpoints]: ...
