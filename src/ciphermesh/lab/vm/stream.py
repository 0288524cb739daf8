"""Copies what the guest appends to its output files to the host's streams while the VM runs."""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from pathlib import Path
from typing import IO


class Follower:
    """Each file's new text, at each `poll`, written to its sink (files without a sink are skipped)."""

    def __init__(self, sinks: Mapping[Path, IO[str] | None]) -> None:
        self._sinks = {path: sink for path, sink in sinks.items() if sink is not None}
        self._offsets = dict.fromkeys(self._sinks, 0)
        # Incremental, so that a character split between two polls is not garbled.
        self._decoders = {path: codecs.getincrementaldecoder("utf-8")("replace") for path in self._sinks}

    def poll(self) -> None:
        for path, sink in self._sinks.items():
            try:
                with open(path, "rb") as source:
                    source.seek(self._offsets[path])
                    chunk = source.read()
            except FileNotFoundError:
                continue
            if chunk:
                self._offsets[path] += len(chunk)
                sink.write(self._decoders[path].decode(chunk))
                sink.flush()
