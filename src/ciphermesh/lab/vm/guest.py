"""The script the guest runs: prepare the guest as the lab needs it, then the command, its output and
exit status in files under the results directory (virtme-ng's own channels need udev on the host)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ciphermesh.lab.vm.host import GUEST_MODULES


@dataclass(frozen=True)
class ControlFiles:
    """The files one run leaves in `<results>/.vm`: what the host watches and reads back."""

    root: Path

    @classmethod
    def under(cls, results: Path) -> ControlFiles:
        return cls(results / ".vm")

    @property
    def script(self) -> Path:
        return self.root / "run.sh"

    @property
    def started(self) -> Path:
        """Written first thing in the guest: the boot is over."""
        return self.root / "started"

    @property
    def prepare_log(self) -> Path:
        return self.root / "prepare.log"

    @property
    def prepare_failed(self) -> Path:
        return self.root / "prepare-failed"

    @property
    def stdout(self) -> Path:
        return self.root / "stdout"

    @property
    def stderr(self) -> Path:
        return self.root / "stderr"

    @property
    def returncode(self) -> Path:
        return self.root / "rc"

    @property
    def console(self) -> Path:
        return self.root / "console.log"


# The guest as the lab needs it: the kernel engine's and the lab's modules, a place for named netns.
PREPARE = (f"modprobe -a {' '.join(GUEST_MODULES)}", "mkdir -p /run/netns", "ip link set lo up")


def guest_script(command: Sequence[str], control: ControlFiles, *, cwd: Path, path: Sequence[str],
                 env: Mapping[str, str], prepare: Sequence[str] = PREPARE) -> str:
    """A POSIX sh script: `prepare` (stopping at the first failure), `env` exported, `path` first on
    PATH; then `command` in `cwd` with no stdin."""
    q = shlex.quote
    # Chained with && as `set -e` does not apply inside a list whose status `||` tests.
    steps = " && ".join(f"{{ {line}; }}" for line in prepare)
    exports = "\n".join(f"export {name}={q(value)}" for name, value in sorted(env.items()))
    search = ":".join([*path, "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    return f"""#!/bin/sh
# Written by ciphermesh's VM harness (ciphermesh.lab.vm); runs inside the guest.
: > {q(str(control.started))}
{{ {steps}; }} > {q(str(control.prepare_log))} 2>&1 || {{ : > {q(str(control.prepare_failed))}; exit 1; }}
export PATH={q(search)}
{exports}
cd {q(str(cwd))}
{shlex.join(command)} < /dev/null > {q(str(control.stdout))} 2> {q(str(control.stderr))}
echo $? > {q(str(control.returncode))}.tmp
mv {q(str(control.returncode))}.tmp {q(str(control.returncode))}
"""
