"""Trace writing in a child process: the proxy only pickles a compact record.

Measured in the thread design, turning a decision into rows and SQLite inserts
cost ~0.5 ms of the proxy's CPU per request, mostly the writer thread fighting
the event loop for the GIL. Here the event loop does `submit()`: the decision is
reduced to what rebuilds it exactly — the policy (its policy_ir, sent once per
policy), the catalog (its rows, sent once per version), the request profile, the
ranked order and costs, and a snapshot of live health — and put on a
multiprocessing queue. The child process rebuilds the `Decision` and hands the
record to an ordinary `TraceWriter` there, which keeps every guarantee of the
store (no_log, scrubbing, batching, disk errors, retention).

The interface is TraceWriter's: `start`, `submit`, `flush`, `close`, `stats`.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ..catalog import parse_catalog
from ..policy import Decision, RequestProfile, parse_policy
from ..policy.dynamic import HealthSnapshot
from .record import TraceRecord
from .writer import TraceWriter

_FIELDS = tuple(f.name for f in dataclasses.fields(TraceRecord) if f.name != "decision")
STATS_BYTES = 4096


class CompactDecision(NamedTuple):
    """What rebuilds a Decision in the child: the policy_ir and catalog rows are None
    when the child already has them (sent once per policy / catalog version)."""

    policy_id: str
    policy_ir: dict[str, Any] | None
    catalog_version: str
    catalog_rows: list[dict[str, Any]] | None
    request: tuple[Any, ...]            # RequestProfile's fields, in order
    order: tuple[int, ...]
    costs: tuple[float, ...]
    cooled: frozenset[str]
    latency: Mapping[str, float | None]


class ProcessTraceWriter:
    def __init__(self, store_path: str | Path, *, max_queue: int = 10000,
                 max_age_s: float | None = None, max_rows: int | None = None) -> None:
        self.store_path = Path(store_path)
        self._options = {"max_age_s": max_age_s, "max_rows": max_rows}
        self._ctx = mp.get_context("spawn")  # never fork a process running an event loop
        self._queue = self._ctx.Queue(maxsize=max_queue)
        self._replies = self._ctx.Queue()
        self._shared = self._ctx.Array("c", STATS_BYTES)
        self._proc: Any = None
        self._lock = threading.Lock()
        self._closed = False
        self._submitted = self._dropped = 0
        self._sent_policies: set[str] = set()
        self._sent_catalogs: set[str] = set()
        self._tokens = 0

    def start(self) -> ProcessTraceWriter:
        self._proc = self._ctx.Process(target=_child_main, name="routecar-traces", daemon=True,
                                       args=(str(self.store_path), self._options, self._queue,
                                             self._replies, self._shared))
        self._proc.start()
        return self

    # -- the request path ---------------------------------------------------------------
    def submit(self, record: TraceRecord) -> bool:
        """Queue `record` for the child; False (and a counted drop) if full, closed or dead."""
        with self._lock:
            self._submitted += 1
            if self._closed or self._proc is None or not self._proc.is_alive():
                self._dropped += 1
                return False
            item, new_policy, new_catalog = self._compact(record)
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self._dropped += 1
                return False
            if new_policy:  # only once the child is sure to receive it
                self._sent_policies.add(new_policy)
            if new_catalog:
                self._sent_catalogs.add(new_catalog)
            return True

    def _compact(self, rec: TraceRecord) -> tuple[tuple[Any, ...], str | None, str | None]:
        fields = {name: getattr(rec, name) for name in _FIELDS}
        d = rec.decision
        if d is None:
            return ("rec", fields, None), None, None
        pid, version = d.policy.identity, d.catalog.version
        ir = None if pid in self._sent_policies else d.policy.to_ir()
        rows = None if version in self._sent_catalogs else d.catalog.to_list()
        health = d.health
        cooled = health.cooled_ids() if health is not None else frozenset()
        latency = ({e.id: health.live_fields(e.id).get("latency_ms") for e in d.catalog.entries}
                   if health is not None and d.policy.reads("latency_ms") else {})
        r = d.request
        req = (r.model, r.prompt_tokens, r.max_tokens, r.tools, r.vision, r.stream, r.api_providers)
        live = CompactDecision(pid, ir, version, rows, req, d.order, d.costs, frozenset(cooled), latency)
        return ("live", fields, live), (pid if ir is not None else None), (version if rows is not None else None)

    # -- control ------------------------------------------------------------------------
    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the child has written (or dropped) everything submitted so far."""
        return self._ask("flush", timeout) is not None

    def close(self, timeout: float = 10.0) -> bool:
        """Stop accepting records; the child writes everything queued and exits."""
        with self._lock:
            if self._closed:
                return True
            self._closed = True
        if self._proc is None:
            return True
        try:
            self._queue.put(("close",), timeout=timeout)
        except queue.Full:
            pass
        self._proc.join(timeout)
        alive = self._proc.is_alive()
        if alive:
            self._proc.terminate()
        self._queue.close()
        return not alive

    def _ask(self, what: str, timeout: float) -> Any:
        with self._lock:
            if self._closed or self._proc is None or not self._proc.is_alive():
                return None
            self._tokens += 1
            token = self._tokens
        deadline = time.monotonic() + timeout
        try:
            self._queue.put((what, token), timeout=timeout)
            while time.monotonic() < deadline:
                kind, got, value = self._replies.get(timeout=max(0.01, deadline - time.monotonic()))
                if got == token:
                    return value
        except (queue.Full, queue.Empty):
            return None
        return None

    def stats(self) -> dict[str, Any]:
        """The child's counters (published every ~0.2 s) plus what never reached it."""
        with self._shared.get_lock():
            raw = self._shared.value  # type: ignore[attr-defined]  # a 'c' array has .value
        child: dict[str, Any] = json.loads(raw) if raw else {"queued": 0, "written": 0, "dropped": 0, "errors": 0,
                                             "last_error": None, "last_write_ts": None}
        with self._lock:
            child["dropped"] += self._dropped
            child["submitted"] = self._submitted
        if self._proc is not None and not self._proc.is_alive() and not self._closed:
            child["errors"] += 1
            child["last_error"] = f"trace writer process exited with code {self._proc.exitcode}"
        child["mode"] = "process"
        return child


# -- the child ------------------------------------------------------------------------------

def _child_main(store_path: str, options: dict[str, Any], q: Any, replies: Any, shared: Any) -> None:
    writer = TraceWriter(store_path, **options).start()
    policies: dict[str, Any] = {}
    catalogs: dict[str, Any] = {}
    rejected = 0
    last_publish = 0.0

    def publish(force: bool = False) -> None:
        nonlocal last_publish
        now = time.monotonic()
        if force or now - last_publish > 0.2:
            last_publish = now
            s = writer.stats()
            s["dropped"] += rejected
            blob = json.dumps(s, default=str).encode()[: STATS_BYTES - 1]
            with shared.get_lock():
                shared.value = blob

    def rebuild(live: CompactDecision) -> Decision:
        if live.catalog_rows is not None and live.catalog_version not in catalogs:
            catalogs[live.catalog_version] = parse_catalog(live.catalog_rows, f"<catalog {live.catalog_version}>")
        catalog = catalogs[live.catalog_version]
        if live.policy_ir is not None and live.policy_id not in policies:
            policies[live.policy_id] = parse_policy(live.policy_ir, catalog.registry)
        return Decision(policies[live.policy_id], catalog, RequestProfile(*live.request), live.order, live.costs,
                        HealthSnapshot(live.cooled, live.latency))

    while True:
        try:
            item = q.get(timeout=0.2)
        except queue.Empty:
            publish()
            continue
        kind = item[0]
        if kind in ("rec", "live"):
            fields, payload = item[1], item[2]
            try:
                decision = rebuild(payload) if kind == "live" else None
            except Exception:  # noqa: BLE001 - an unknown policy/catalog: count it, keep going
                rejected += 1
            else:
                writer.submit(TraceRecord(**fields, decision=decision))
        elif kind == "flush":
            writer.flush()
            publish(force=True)
            replies.put(("flushed", item[1], True))
        elif kind == "close":
            writer.close()
            publish(force=True)
            return
        publish()
