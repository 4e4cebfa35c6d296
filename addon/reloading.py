"""A value loaded from a file or URL, reloaded when it changes, keeping the last good one.

Used for the catalog (and anything else the operator edits while routecar
runs). A broken new version never replaces a working one: it is reported in
`last_error` and the previous value stays in service.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def _stamp(source: str) -> tuple[float, int] | None:
    """Change detector for a local file: (mtime_ns, size); None for URLs (use the TTL)."""
    if "://" in source and not source.startswith("file://"):
        return None
    path = source.removeprefix("file://")
    try:
        st = os.stat(path)
    except OSError:
        return (-1.0, -1)
    return (st.st_mtime_ns, st.st_size)


@dataclass
class ReloadingSource(Generic[T]):
    """`current()` returns the value, re-checking the source at most every `ttl_s`."""

    source: str
    load: Callable[[str], T]
    clock: Callable[[], float]
    ttl_s: float = 2.0
    url_ttl_s: float = 60.0

    def __post_init__(self) -> None:
        self._value: T = self.load(self.source)  # a broken first load fails the start
        self._stamp = _stamp(self.source)
        self._checked = self.clock()
        self.last_error: str | None = None
        self.reloads = 0

    def current(self) -> T:
        now = self.clock()
        ttl = self.ttl_s if self._stamp is not None else self.url_ttl_s
        if now - self._checked >= ttl:
            self._checked = now
            self.refresh()
        return self._value

    def refresh(self, force: bool = False) -> bool:
        """Reload if the source changed (or `force`); True if a new value is in service."""
        stamp = _stamp(self.source)
        if not force and stamp is not None and stamp == self._stamp:
            return False
        try:
            value = self.load(self.source)
        except ConfigError as e:
            self._stamp = stamp  # don't retry the same broken file on every check
            self.last_error = f"{e} (keeping the last good version)"
            return False
        self._value, self._stamp, self.last_error = value, stamp, None
        self.reloads += 1
        return True
