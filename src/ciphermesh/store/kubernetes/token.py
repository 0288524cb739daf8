"""A bearer token read from a file and re-read as client-go's cached file token source does: at most a
minute old, and at once after the server answered 401 (projected ServiceAccount tokens rotate)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ciphermesh.store.errors import StoreError

log = logging.getLogger(__name__)

TOKEN_REREAD_SECONDS = 60.0
"""The oldest a token read from its file may be when it is sent (client-go: one minute)."""


class TokenFile:
    """The token in `path`; a failed re-read keeps the last token (and logs once), as client-go does."""

    def __init__(
        self,
        path: Path,
        *,
        reread: float = TOKEN_REREAD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._reread = reread
        self._clock = clock
        self._lock = threading.Lock()
        self._token = self._read()  # a token that cannot be read at start is an error, not a retry
        self._read_at = clock()
        self._failing = False

    def _read(self) -> str:
        try:
            token = self.path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"token file {self.path}: {getattr(exc, 'strerror', None) or exc}") from None
        if not token:
            raise StoreError(f"token file {self.path}: empty")
        return token

    def token(self) -> str:
        """The token, re-read first if the last read is `reread` seconds old."""
        with self._lock:
            if self._clock() - self._read_at >= self._reread:
                self._refresh()
            return self._token

    def refresh(self) -> bool:
        """Re-read now (after a 401); True if the token changed."""
        with self._lock:
            before = self._token
            self._refresh()
            return self._token != before

    def _refresh(self) -> None:
        self._read_at = self._clock()
        try:
            self._token = self._read()
        except StoreError as exc:
            if not self._failing:
                log.warning("%s; keeping the last token", exc)
            self._failing = True
            return
        self._failing = False
