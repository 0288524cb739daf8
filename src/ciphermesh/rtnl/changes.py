"""What a reconcile did to the kernel, for logs and for tests that check convergence."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Changes:
    """Kernel objects added (or replaced) and removed by one reconcile pass, described in `ip` terms."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)
