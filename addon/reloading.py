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
    kept version is named in `last_error`). With `background=True` (the sidecar),
    the check and any reload run in a thread: `current()` never blocks the event
    loop on a slow URL, a big SQLite table or a large file, and returns the value
    in service until the new one is ready.
    """

    def __init__(self, source: str, load: Callable[[str], T], clock: Callable[[], float],
                 ttl_s: float = 2.0, url_ttl_s: float = 60.0, *, label: str | None = None,
                 background: bool = False) -> None:
        self.source, self.load, self.clock = source, load, clock
        self.ttl_s, self.url_ttl_s = ttl_s, url_ttl_s
        self.label = label or source
        self.last_error: str | None = None
        self.reloads = 0
        self.background = background
        self._refreshing = False
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
                    if not self.background:
                        self.refresh()
                    elif not self._refreshing:
                        self._refreshing = True
                        threading.Thread(target=self._refresh_in_background, daemon=True,
                                         name=f"routecar-reload {self.label}").start()
        return self._value

    def _refresh_in_background(self) -> None:
        try:
            self.refresh()
        except Exception as e:  # noqa: BLE001 - a loader bug must not kill reloading for good
            self.last_error = f"{type(e).__name__}: {e}{self.kept()}"
        finally:
            self._refreshing = False

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
