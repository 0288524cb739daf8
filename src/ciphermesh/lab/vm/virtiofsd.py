"""A `virtiofsd` that takes the Rust daemon's flags (as virtme-ng passes them) and runs QEMU's C daemon.

Debian 12 ships only the C daemon (`/usr/lib/qemu/virtiofsd`), whose flags differ and which has no
read-only mode: a read-only export is a read-only bind mount made in a private mount namespace.
virtme-ng starts this with `&` and waits for `<socket>.pid`, so that file is written once the socket
exists; the pid in it is the daemon's, which virtme-ng signals when the guest is done.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

C_DAEMON = Path("/usr/lib/qemu/virtiofsd")
VERSION = "virtiofsd 1.10.0 (ciphermesh wrapper around QEMU's C virtiofsd)"
SOCKET_WAIT = 10.0
HELP = """usage: virtiofsd --socket-path PATH --shared-dir DIR [--cache MODE] [--readonly] [--sandbox none]
Runs QEMU's C virtiofsd with these (the Rust daemon's) flags; --readonly exports a read-only bind mount.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="virtiofsd", add_help=False)
    parser.add_argument("--socket-path", required=True)
    parser.add_argument("--shared-dir", required=True)
    parser.add_argument("--cache", default="auto", choices=("auto", "always", "never", "none"))
    parser.add_argument("--readonly", action="store_true")
    # Accepted and ignored: the C daemon logs to stderr, mounts no submounts and uses its own sandbox.
    parser.add_argument("--sandbox")
    parser.add_argument("--syslog", action="store_true")
    parser.add_argument("--no-announce-submounts", action="store_true")
    parser.add_argument("--posix-acl", action="store_true")
    return parser


def daemon_argv(socket: str, source: str, cache: str) -> list[str]:
    """The C daemon's command line for one export; chroot, as its namespace sandbox fails in containers."""
    mode = "none" if cache == "never" else cache
    return [str(C_DAEMON), f"--socket-path={socket}", "-o", f"source={source}", "-o", f"cache={mode}",
            "-o", "sandbox=chroot", "-o", "log_level=err"]


def launch_argv(socket: str, shared: str, cache: str, readonly: bool) -> list[str]:
    """The daemon, or for a read-only export `unshare` that bind-mounts `shared` read-only, then the daemon
    on that mount (exec all the way, so the pid started is the daemon's)."""
    if not readonly:
        return daemon_argv(socket, shared, cache)
    view = f"{socket}.ro"
    script = (f"mount --bind -o ro {shlex.quote(shared)} {shlex.quote(view)} && "
              f"exec {shlex.join(daemon_argv(socket, view, cache))}")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if "--version" in words or "-V" in words:
        print(VERSION)
        return 0
    if "--help" in words or "-h" in words:
        # virtme-ng looks for `--readonly` here to decide whether to ask for read-only exports.
        print(HELP, end="")
        return 0
    args = _parser().parse_args(words)
    view = Path(f"{args.socket_path}.ro")
    if args.readonly:
        view.mkdir(exist_ok=True)
    daemon = subprocess.Popen(launch_argv(args.socket_path, args.shared_dir, args.cache, args.readonly))
    signal.signal(signal.SIGTERM, lambda *_: daemon.terminate())
    try:
        deadline = time.monotonic() + SOCKET_WAIT
        while not os.path.exists(args.socket_path) and daemon.poll() is None:
            if time.monotonic() > deadline:
                daemon.kill()
                break
            time.sleep(0.02)
        if daemon.poll() is None:
            Path(f"{args.socket_path}.pid").write_text(f"{daemon.pid}\n")
        return daemon.wait()
    finally:
        if args.readonly:
            view.rmdir()


if __name__ == "__main__":
    sys.exit(main())
