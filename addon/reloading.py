"""A value loaded from a file or URL, reloaded when it changes, keeping the last good one.

Used for the catalog and the tenant table (anything the operator edits while
routecar runs). A broken new version never replaces a working one: it is
reported in `last_error` and the previous value stays in service. Only the
first load raises.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def file_stamp(source: str) -> tuple[int, int] | None:
    """Change detector for a local file: (mtime_ns, size); None for URLs (use the TTL)."""
    if "://" in source and not source.startswith("file://"):
        return None
    try:
        st = os.stat(source.removeprefix("file://"))
    except OSError:
        return (-1, -1)
    return (st.st_mtime_ns, st.st_size)


class ReloadingSource(Generic[T]):
    """`current()` returns the value, re-checking the source at most every `ttl_s`.

    Subclasses refine `stamp()` (what counts as a change) and `kept()` (how the
    kept version is named in `last_error`).
    """

    def __init__(self, source: str, load: Callable[[str], T], clock: Callable[[], float],
                 ttl_s: float = 2.0, url_ttl_s: float = 60.0, *, label: str | None = None) -> None:
        self.source, self.load, self.clock = source, load, clock
        self.ttl_s, self.url_ttl_s = ttl_s, url_ttl_s
        self.label = label or source
        self.last_error: str | None = None
        self.reloads = 0
        self._lock = threading.Lock()
        self._stamp = self.stamp()
        self._value: T = load(source)  # a broken first load fails the start
        self._checked = clock()

    def stamp(self) -> Any:
        return file_stamp(self.source)

    def kept(self) -> str:
        return " (keeping the last good version)"

    def current(self) -> T:
        now = self.clock()
        ttl = self.ttl_s if self._stamp is not None else self.url_ttl_s
        if now - self._checked >= ttl:
            with self._lock:
                if now - self._checked >= ttl:
                    self._checked = now
                    self.refresh()
        return self._value

    def refresh(self, force: bool = False) -> bool:
        """Reload if the source changed (or `force`); True if a new value is in service."""
        try:
            stamp = self.stamp()
        except ConfigError as e:
            self.last_error = f"{e}{self.kept()}"
            return False
        if not force and stamp is not None and stamp == self._stamp:
            return False
        self._stamp = stamp  # a broken file is parsed once, not on every check
        try:
            value = self.load(self.source)
        except ConfigError as e:
            self.last_error = f"{e}{self.kept()}"
            return False
        self._value, self.last_error = value, None
        self.reloads += 1
        return True
