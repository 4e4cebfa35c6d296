"""Background writer: the request path hands a TraceRecord over and never waits.

`submit()` appends the record to a bounded inbox (a full inbox drops it and
counts the drop) and wakes nobody while the writer is busy: one thread takes
records out on its own tick (`slice_s`, 10 ms) and turns each into rows
(`rows.record_rows`: tens of microseconds, the decision's shared parts
memoised), giving the GIL and the CPU back between records
(`os.sched_yield()`), so an event loop on the same core waits for one record's
work at most, never for a batch; only a writer idle for a whole tick sleeps
until the next `submit()` wakes it. (Measured with py-spy on the proxy at
concurrency 1: waking a waiting thread from `submit()`, as `queue.Queue.put`
does, was ~5 % of the event loop's time.) The rows of up to `batch_size`
records, or of `linger_s` seconds, are committed in one transaction through
its own `TraceStore` (a sqlite connection belongs to the thread that opened
it; SQLite releases the GIL while it works). A record that cannot be turned
into rows is counted as dropped, with the error. A commit that fails (disk
gone, directory replaced, sqlite error) is counted in `errors` with
`last_error` and its batch is counted as dropped; the thread keeps running and
reopens the database for the next batch.

Accounting: every submitted record ends up in exactly one of `queued`,
`written` or `dropped`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .parts import PartCache
from .record import TraceRecord
from .rows import record_rows
from .store import TraceStore

log = logging.getLogger("routecar.traces")
THREAD_NAME = "routecar-traces"


def _name_os_thread(name: str) -> None:
    """Give the calling OS thread `name` (Linux, 15 bytes at most), so `top -H`, `ps -L` and
    /proc/PID/task/*/comm tell the trace writer's CPU time from the event loop's."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
        except (OSError, AttributeError):
            pass


class TraceWriter:
    def __init__(self, store_path: str | Path, *, max_queue: int = 10000,
                 batch_size: int = 256, flush_interval_s: float = 0.05,
                 max_age_s: float | None = None, max_rows: int | None = None,
                 prune_every_s: float = 60.0, linger_s: float = 0.05, slice_s: float = 0.01,
                 clock: Callable[[], float] = time.time) -> None:
        self.store_path = Path(store_path)
        self.batch_size = max(1, batch_size)
        self.flush_interval_s = flush_interval_s
        # A batch is committed this long after its first record (or when full): under load
        # one transaction then carries dozens of traces instead of one or two.
        self.linger_s = linger_s
        # While busy, the writer looks at its inbox this often (its own tick: submit() wakes it
        # only when it was idle for a whole tick), and turns what came into rows one by one.
        self.slice_s = slice_s
        self._parts = PartCache()  # the decisions' shared parts, built once (this thread only)
        self.max_age_s, self.max_rows, self.prune_every_s = max_age_s, max_rows, prune_every_s
        self.clock = clock
        self.max_queue = max_queue
        # submit() appends here (deque appends and pops are atomic); the writer thread takes
        # records out on its own ticks, so the request path never wakes it while it is busy.
        self._inbox: deque[TraceRecord] = deque()
        self._wake = threading.Event()      # set by close(), flush(), and a submit() to an idle writer
        self._idle = False                  # the writer is in a long wait: the next submit() wakes it
        self._lock = threading.Lock()       # guards counters and the closed flag
        self._done = threading.Condition(self._lock)
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._submitted = self._written = self._dropped = self._errors = 0
        self._last_error: str | None = None
        self._last_write_ts: float | None = None
        self._store: TraceStore | None = None
        self._store_inode: int | None = None
        self._last_prune: float | None = None

    def start(self) -> TraceWriter:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name=THREAD_NAME,
                                                daemon=True)
                self._thread.start()
        return self

    def submit(self, record: TraceRecord) -> bool:
        """Queue `record` for writing; False (and a counted drop) if full or closed."""
        with self._lock:
            self._submitted += 1
            if not self._closed:
                if len(self._inbox) < self.max_queue:
                    self._inbox.append(record)
                    if self._idle:
                        self._idle = False
                        self._wake.set()
                    return True
            self._dropped += 1
            dropped = self._dropped
        if dropped == 1 or dropped % 1000 == 0:  # say so, without a line per request
            log.warning("routecar: trace queue full or closed: %d trace(s) dropped so far "
                        "(requests are still served)", dropped)
        return False

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record submitted so far is written or dropped."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._done:
            target = self._submitted
            while self._written + self._dropped < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._done.wait(left):
                    return self._written + self._dropped >= target
        return True

    def close(self, timeout: float = 10.0) -> bool:
        """Stop accepting records, write everything queued, stop the thread.

        Returns False if the queue could not be drained within `timeout`."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._stop.set()
        self._wake.set()
        if thread is None:  # never started: drain in the caller's thread
            self._drain()
            self._close_store()
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"queued": len(self._inbox), "written": self._written,
                    "dropped": self._dropped, "errors": self._errors,
                    "last_error": self._last_error, "last_write_ts": self._last_write_ts}

    # --- writer thread ----------------------------------------------------

    def _run(self) -> None:
        _name_os_thread(THREAD_NAME)
        pending: list[dict[str, list[Any]]] = []
        records = 0  # the records `pending` stands for (also those that gave no rows)
        due = 0.0
        inbox = self._inbox
        try:
            while True:
                if not inbox:
                    stopping = self._stop.is_set()
                    if records and (stopping or time.monotonic() >= due):
                        self._commit(pending, records)
                        pending, records = [], 0
                        continue
                    if stopping:
                        break
                    if not records:
                        self._maybe_prune()
                        self._idle = True   # a long wait: the next submit() wakes us
                        if inbox:
                            self._idle = False
                            continue
                        self._wake.wait(self.flush_interval_s)
                    else:  # busy: our own tick, no wake-up from the request path
                        self._wake.wait(min(self.slice_s, max(0.0, due - time.monotonic())))
                    self._idle = False
                    self._wake.clear()
                    continue
                record = inbox.popleft()
                if not records:
                    due = time.monotonic() + self.linger_s
                records += 1
                rows = self._rows(record)
                if rows is not None:
                    pending.append(rows)
                if records >= self.batch_size or time.monotonic() >= due:
                    self._commit(pending, records)
                    pending, records = [], 0
                else:
                    os.sched_yield()  # GIL released: an event loop waiting for it goes first
        finally:
            if records:
                self._commit(pending, records)
            self._close_store()

    def _drain(self) -> None:
        while self._inbox:
            batch = []
            while len(batch) < self.batch_size and self._inbox:
                batch.append(self._inbox.popleft())
            rows = [r for r in map(self._rows, batch) if r is not None]
            self._commit(rows, len(batch))

    def _rows(self, record: TraceRecord) -> dict[str, list[Any]] | None:
        """The record's rows; None (the record counted as dropped, the error kept) if it has none."""
        try:
            return record_rows(record, self._parts)
        except Exception as e:  # noqa: BLE001 - a malformed record must not cost its batch
            self._error(e)
            with self._done:
                self._dropped += 1
                self._done.notify_all()
            return None

    def _commit(self, pending: list[dict[str, list[Any]]], records: int) -> None:
        """Commit the rows of `records` records (`pending`: those that gave rows)."""
        ok = 0
        if pending:
            try:
                self._open_store().commit(pending)
                ok = len(pending)
            except Exception as e:  # noqa: BLE001 - a trace must never take the proxy down
                self._failed(e)
        with self._done:
            self._written += ok
            self._dropped += len(pending) - ok
            if ok:
                self._last_write_ts = self.clock()
            self._done.notify_all()

    def _maybe_prune(self) -> None:
        if self.max_age_s is None and self.max_rows is None:
            return
        now = self.clock()
        if self._last_prune is not None and now - self._last_prune < self.prune_every_s:
            return
        self._last_prune = now
        try:
            self._open_store().prune(self.max_age_s, self.max_rows, now=now)
        except Exception as e:  # noqa: BLE001
            self._failed(e)

    def _open_store(self) -> TraceStore:
        # An open connection keeps writing into a file that was deleted or replaced
        # (rotation, a removed directory): check the path still is our file.
        try:
            inode: int | None = os.stat(self.store_path).st_ino
        except OSError:
            inode = None
        if self._store is not None and inode != self._store_inode:
            self._close_store()
        if self._store is None:
            self._store = TraceStore(self.store_path, clock=self.clock)
            self._store_inode = os.stat(self.store_path).st_ino
        return self._store

    def _close_store(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except Exception:  # noqa: BLE001
                pass
            self._store = None

    def _failed(self, e: Exception) -> None:
        self._close_store()  # reopen on the next batch
        self._error(e)

    def _error(self, e: Exception) -> None:
        with self._lock:
            self._errors += 1
            message = f"{type(e).__name__}: {e}"
            repeated, self._last_error = message == self._last_error, message
        if not repeated:  # a failing disk logs once per distinct error, not once per batch
            log.error("routecar: cannot write traces to %s: %s (requests are still served)",
                      self.store_path, message)
