"""Run tshark over a capture with ESP security associations and read back per-frame fields."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ESP_FIELDS: tuple[str, ...] = (
    "frame.number",
    "frame.protocols",
    "esp.spi",
    "esp.sequence",
    "esp.icv_good",
    "esp.icv_bad",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
)

_AGGREGATOR = "|"
_TRUE_VALUES = frozenset({"1", "True", "TRUE", "true"})
# tshark echoes a rejected `-o uat:esp_sa:...` option verbatim, keys included.
_KEY_HEX = re.compile(r"0x[0-9a-fA-F]{16,}")


class TsharkError(RuntimeError):
    """tshark is missing, rejected its options or the capture, or did not finish in time."""


@dataclass(frozen=True)
class EspFrame:
    """What tshark reported for one frame: every requested field, all occurrences in packet order."""

    fields: Mapping[str, tuple[str, ...]]

    def first(self, name: str) -> str | None:
        """The first occurrence of a field, or None if tshark did not report it."""
        values = self.fields.get(name, ())
        return values[0] if values else None

    @property
    def number(self) -> int:
        """The frame number, counted from 1."""
        return int(self.first("frame.number") or 0)

    @property
    def spi(self) -> int | None:
        value = self.first("esp.spi")
        return int(value, 0) if value else None

    @property
    def sequence(self) -> int | None:
        value = self.first("esp.sequence")
        return int(value, 0) if value else None

    @property
    def protocols(self) -> tuple[str, ...]:
        """The dissector chain, e.g. ("raw", "ip", "esp", "ip", "icmp", "data")."""
        return tuple((self.first("frame.protocols") or "").split(":"))

    @property
    def icv_good(self) -> bool:
        """True only when tshark checked the ICV (or GCM tag) and it verified."""
        return self.first("esp.icv_good") in _TRUE_VALUES and self.first("esp.icv_bad") not in _TRUE_VALUES

    @property
    def icv_checked(self) -> bool:
        """True when tshark reached a verdict on the ICV, good or bad (needs a matching SA and key)."""
        return self.first("esp.icv_good") is not None or self.first("esp.icv_bad") is not None


def tshark_path() -> str | None:
    """The tshark executable on PATH, or None if it is not installed."""
    return shutil.which("tshark")


def esp_options(sa_entries: Iterable[str]) -> list[str]:
    """tshark options that turn on ESP decryption and ICV checks with these `uat:esp_sa` records."""
    options = [
        "-o",
        "esp.enable_encryption_decode:TRUE",
        "-o",
        "esp.enable_authentication_check:TRUE",
    ]
    for entry in sa_entries:
        options += ["-o", f"uat:esp_sa:{entry}"]
    return options


def read_fields(
    pcap: Path,
    fields: Sequence[str],
    *,
    options: Sequence[str] = (),
    display_filter: str | None = None,
    timeout: float = 60.0,
) -> list[dict[str, tuple[str, ...]]]:
    """Run `tshark -T fields` on a capture and return, per frame, each field's occurrences."""
    executable = tshark_path()
    if executable is None:
        raise TsharkError("tshark is not installed (apt-get install tshark)")
    command = [
        executable,
        "-n",
        "-r",
        str(pcap),
        *options,
        "-T",
        "fields",
        "-E",
        "header=n",
        "-E",
        "separator=/t",
        "-E",
        "occurrence=a",
        "-E",
        f"aggregator={_AGGREGATOR}",
    ]
    for name in fields:
        command += ["-e", name]
    if display_filter is not None:
        command += ["-Y", display_filter]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise TsharkError(f"tshark did not finish within {timeout:g} s") from exc
    if result.returncode != 0:
        raise TsharkError(f"tshark failed (exit {result.returncode}): {_last_error_line(result.stderr)}")
    rows = []
    for line in result.stdout.splitlines():
        columns = line.split("\t")
        columns += [""] * (len(fields) - len(columns))
        rows.append(
            {
                name: tuple(v for v in value.split(_AGGREGATOR) if v)
                for name, value in zip(fields, columns, strict=False)
            }
        )
    return rows


def decrypt_esp(
    pcap: Path, sa_entries: Iterable[str], *, extra_fields: Sequence[str] = (), timeout: float = 60.0
) -> list[EspFrame]:
    """Have tshark decrypt and authenticate every ESP frame of a capture with the given SAs."""
    fields = list(dict.fromkeys((*ESP_FIELDS, *extra_fields)))
    rows = read_fields(pcap, fields, options=esp_options(sa_entries), timeout=timeout)
    return [EspFrame(row) for row in rows]


def _last_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and "Running as user" not in line]
    return _KEY_HEX.sub("0x<redacted>", lines[-1]) if lines else "no error message"
