"""Live health per catalog entry: a small circuit breaker fed by attempt results.

Each entry is in one of three states:

    closed     healthy; every attempt is recorded in a rolling window
    open       cooled down for `cooldown_s` after `consecutive_failures` failures
               in a row, or a rolling error rate above the threshold
    half_open  the cooldown has passed; reported healthy again so traffic can
               probe it: one success closes it, one failure opens it again

`is_healthy`/`live_fields` feed the policy's live fields (`healthy`,
`latency_ms`); `snapshot` feeds `/x/healthz`. `version` increments whenever any
entry's healthy flag flips (also when a cooldown simply runs out), so callers
can cache work keyed by it. The clock is injected (monotonic seconds).

The addon records from its event loop; `snapshot` may be read from another
thread. One lock guards all state; nothing slow happens under it.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypedDict


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class LiveFields(TypedDict):
    healthy: bool
    latency_ms: float | None


class EntryHealth(TypedDict):
    healthy: bool
    state: str
    error_rate: float | None
    samples: int
    consecutive_failures: int
    cooled_until: float | None
    latency_ms: float | None


@dataclass(frozen=True, slots=True)
class HealthConfig:
    window: int = 20
    min_samples: int = 5
    error_rate_threshold: float = 0.5
    consecutive_failures: int = 3
    cooldown_s: float = 30.0

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if not 1 <= self.min_samples <= self.window:
            raise ValueError(f"min_samples must be in 1..window ({self.window}), "
                             f"got {self.min_samples}")
        if not 0.0 <= self.error_rate_threshold <= 1.0:
            raise ValueError(f"error_rate_threshold must be in 0..1, "
                             f"got {self.error_rate_threshold}")
        if self.consecutive_failures < 1:
            raise ValueError(f"consecutive_failures must be >= 1, "
                             f"got {self.consecutive_failures}")
        if self.cooldown_s < 0:
            raise ValueError(f"cooldown_s must be >= 0, got {self.cooldown_s}")


@dataclass(slots=True)
class _Entry:
    """Mutable per-entry state; only touched under HealthTracker._lock."""

    results: deque[bool]
    latencies: deque[float]
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    cooled_until: float | None = None

    def error_rate(self) -> float | None:
        if not self.results:
            return None
        return self.results.count(False) / len(self.results)

    def latency_ms(self) -> float | None:
        return statistics.median(self.latencies) if self.latencies else None


class HealthTracker:
    """Per-entry circuit breakers. `clock` returns monotonic seconds."""

    def __init__(self, clock: Callable[[], float], *, window: int = 20, min_samples: int = 5,
                 error_rate_threshold: float = 0.5, consecutive_failures: int = 3,
                 cooldown_s: float = 30.0) -> None:
        self.clock = clock
        self.config = HealthConfig(window, min_samples, error_rate_threshold,
                                   consecutive_failures, cooldown_s)
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._version = 0
        # Earliest cooldown end, so reads skip the scan until something can expire.
        self._next_expiry = math.inf
        self._cooled: frozenset[str] = frozenset()
        self._cooled_version = 0

    def record(self, entry_id: str, ok: bool, latency_ms: float | None = None) -> None:
        """Record one attempt. Latency counts only for successes (a timeout says nothing useful)."""
        now = self.clock()
        with self._lock:
            self._expire(now)
            entry = self._entries.get(entry_id)
            if entry is None:
                entry = _Entry(deque(maxlen=self.config.window), deque(maxlen=self.config.window))
                self._entries[entry_id] = entry
            entry.results.append(ok)
            if ok:
                if latency_ms is not None:
                    entry.latencies.append(latency_ms)
                entry.consecutive_failures = 0
                if entry.state is BreakerState.HALF_OPEN:
                    # A fresh start: the failures that opened it must not re-open it.
                    entry.state = BreakerState.CLOSED
                    entry.results.clear()
                    entry.results.append(True)
                return
            entry.consecutive_failures += 1
            if entry.state is BreakerState.HALF_OPEN or (
                    entry.state is BreakerState.CLOSED and self._tripped(entry)):
                entry.state = BreakerState.OPEN
                entry.cooled_until = now + self.config.cooldown_s
                self._next_expiry = min(self._next_expiry, entry.cooled_until)
                self._version += 1

    def is_healthy(self, entry_id: str) -> bool:
        """False only while the entry is cooling down; unknown entries are healthy."""
        now = self.clock()
        with self._lock:
            self._expire(now)
            entry = self._entries.get(entry_id)
            return entry is None or entry.state is not BreakerState.OPEN

    def latency_ms(self, entry_id: str) -> float | None:
        """Median latency of the successes in the window, or None if there are none."""
        with self._lock:
            entry = self._entries.get(entry_id)
            return None if entry is None else entry.latency_ms()

    def live_fields(self, entry_id: str) -> LiveFields:
        now = self.clock()
        with self._lock:
            self._expire(now)
            entry = self._entries.get(entry_id)
            if entry is None:
                return {"healthy": True, "latency_ms": None}
            return {"healthy": entry.state is not BreakerState.OPEN,
                    "latency_ms": entry.latency_ms()}

    def snapshot(self) -> dict[str, EntryHealth]:
        """A copy of every known entry's health, safe to read from another thread."""
        now = self.clock()
        with self._lock:
            self._expire(now)
            return {entry_id: {
                "healthy": entry.state is not BreakerState.OPEN,
                "state": str(entry.state),
                "error_rate": entry.error_rate(),
                "samples": len(entry.results),
                "consecutive_failures": entry.consecutive_failures,
                "cooled_until": entry.cooled_until if entry.state is BreakerState.OPEN else None,
                "latency_ms": entry.latency_ms(),
            } for entry_id, entry in sorted(self._entries.items())}

    def cooled_ids(self) -> frozenset[str]:
        """Entries cooling down right now; recomputed only when a flag flipped (hot path)."""
        now = self.clock()
        with self._lock:
            self._expire(now)
            if self._cooled_version != self._version:
                self._cooled = frozenset(i for i, e in self._entries.items() if e.state is BreakerState.OPEN)
                self._cooled_version = self._version
            return self._cooled

    @property
    def version(self) -> int:
        """Bumped whenever any entry's healthy flag flips."""
        now = self.clock()
        with self._lock:
            self._expire(now)
            return self._version

    def _tripped(self, entry: _Entry) -> bool:
        if entry.consecutive_failures >= self.config.consecutive_failures:
            return True
        rate = entry.error_rate()
        return (len(entry.results) >= self.config.min_samples and rate is not None
                and rate > self.config.error_rate_threshold)

    def _expire(self, now: float) -> None:
        """Move entries whose cooldown has run out to half-open. Caller holds the lock."""
        if now < self._next_expiry:
            return
        self._next_expiry = math.inf
        for entry in self._entries.values():
            if entry.state is not BreakerState.OPEN or entry.cooled_until is None:
                continue
            if now >= entry.cooled_until:
                entry.state = BreakerState.HALF_OPEN
                entry.cooled_until = None
                self._version += 1
            else:
                self._next_expiry = min(self._next_expiry, entry.cooled_until)
