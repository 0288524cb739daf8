"""nft, the nftables command, run in the caller's network namespace: scripts in, JSON listings out."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from typing import Any

from ciphermesh.rtnl.errors import DatapathError

_NFT_TIMEOUT = 10.0


def _nft_error(stderr: str, returncode: int) -> str:
    for line in stderr.splitlines():
        if "Error: " in line:
            return line.split("Error: ", 1)[1].strip()
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {returncode}"


def nft(args: Sequence[str], script: str | None = None, *, netns_fd: int | None = None) -> str:
    """nft's stdout; a DatapathError with nft's own reason when it fails or is missing.

    A child process starts in the namespace of the thread that forks it, the caller's; `netns_fd` (an open
    /proc/.../ns/net) runs it in that namespace instead, through util-linux's nsenter.
    """
    argv = ["nft", *args]
    if netns_fd is not None:
        argv = ["nsenter", f"--net=/proc/self/fd/{netns_fd}", *argv]
    try:
        result = subprocess.run(
            argv, input=script, capture_output=True, text=True, timeout=_NFT_TIMEOUT, check=False,
            pass_fds=() if netns_fd is None else (netns_fd,),
        )
    except FileNotFoundError as exc:
        raise DatapathError(f"{argv[0]} is not installed: install the Debian package "
                            f"{'nftables' if argv[0] == 'nft' else 'util-linux'}") from exc
    except subprocess.TimeoutExpired as exc:
        raise DatapathError(f"nft {' '.join(args)} did not finish within {_NFT_TIMEOUT:g} s") from exc
    if result.returncode != 0:
        raise DatapathError(f"nft {' '.join(args)}: {_nft_error(result.stderr, result.returncode)}")
    return result.stdout


def nft_json(args: Sequence[str], *, netns_fd: int | None = None) -> list[dict[str, Any]]:
    """The objects of `nft -j ARGS`."""
    out = nft(["-j", *args], netns_fd=netns_fd)
    try:
        items = json.loads(out)["nftables"] if out.strip() else []
    except (ValueError, KeyError, TypeError) as exc:
        raise DatapathError(f"nft -j {' '.join(args)}: unreadable JSON output") from exc
    return [item for item in items if isinstance(item, dict)]
