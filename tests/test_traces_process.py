"""The process trace writer writes exactly what the in-process writer writes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from routecar.catalog import load_catalog
from routecar.health import HealthTracker
from routecar.policy import RequestProfile, evaluate, parse_policy
from routecar.traces.process import ProcessTraceWriter
from routecar.traces.record import TraceRecord
from routecar.traces.store import TraceStore
from routecar.traces.writer import TraceWriter

CAT = load_catalog()
POLICIES = [
    {"rules": [{"id": "floor", "rule": ["cmp", "bench_intelligence", "ge", 0.5], "from": "rule:free"}]},
    {"rules": [["eq", "region", "eu"], ["eq", "healthy", True], ["cmp", "latency_ms", "le", 500]],
     "rank": [["asc", "latency_ms"]]},
    {"rules": [["cmp", "bench_intelligence", "gt", 0.99]]},
]


def _records() -> list[TraceRecord]:
    now = [0.0]
    health = HealthTracker(lambda: now[0])
    for _ in range(3):  # cool one entry down, give another a latency
        health.record("mistral/mistral-small-3", False, None)
    health.record("scaleway/mistral-small-3", True, 120.0)
    out = []
    for n, pol in enumerate(POLICIES * 2):
        d = evaluate(parse_policy(pol, CAT.registry), CAT,
                     RequestProfile.from_body({"messages": [{"role": "user", "content": "hi " * n}]}), health)
        out.append(TraceRecord(trace_id=f"rt_{n}", ts=1000.0 + n, tenant="t", status=200, decision=d,
                               attempts=[{"entry": "x", "status": 200, "error_class": "ok"}],
                               request_body=b'{"q": 1}', response_body="{}", catalog=CAT.to_list() if n == 0 else None))
    health.record("mistral/mistral-small-3", True, 5.0)  # live health moves on: traces keep the snapshot
    out.append(TraceRecord(trace_id="rt_none", ts=2001.0, outcome="invalid_policy"))
    return out


def _dump(path: Path) -> dict[str, object]:
    with TraceStore(path) as store:
        return {r["trace_id"]: store.get(r["trace_id"]) for r in store.query(last=100)}


def test_process_writer_rows_equal_thread_writer_rows(tmp_path):
    records = _records()
    thread = TraceWriter(tmp_path / "thread.db").start()
    proc = ProcessTraceWriter(tmp_path / "proc.db").start()
    closed: list[bool] = []
    try:
        for r in records:
            assert thread.submit(r)
            assert proc.submit(r)
        assert thread.flush(20) and proc.flush(20)
        stats = proc.stats()
        assert stats["written"] == len(records) and stats["dropped"] == 0 and stats["mode"] == "process"
    finally:  # close both whatever happened (no assert here: it would hide the first failure)
        closed = [thread.close(), proc.close()]
    assert closed == [True, True]
    a, b = _dump(tmp_path / "thread.db"), _dump(tmp_path / "proc.db")
    assert len(a) == len(records)
    assert a == b
    cooled = a["rt_1"]["candidates"]
    assert any(c["entry_id"] == "mistral/mistral-small-3" and c["failed_field"] == "healthy" for c in cooled)


def test_close_writes_everything_queued(tmp_path):
    records = _records()
    w = ProcessTraceWriter(tmp_path / "t.db").start()
    for _ in range(20):
        for r in records:
            w.submit(TraceRecord(**{**r.__dict__, "trace_id": f"{r.trace_id}-{time.monotonic_ns()}"}))
    assert w.close(timeout=30)
    with TraceStore(tmp_path / "t.db") as store:
        assert len(store.query(last=10_000)) == 20 * len(records)


def test_a_dead_writer_process_drops_and_says_so(tmp_path):
    w = ProcessTraceWriter(tmp_path / "t.db").start()
    try:
        w._proc.kill()
        w._proc.join(10)
        assert w.submit(_records()[0]) is False
        s = w.stats()
        assert s["dropped"] == 1 and "exited" in s["last_error"]
        assert w.flush(1) is False
    finally:
        w.close(timeout=5)


@pytest.mark.parametrize("full", [1])
def test_full_queue_drops_without_blocking(tmp_path, full):
    w = ProcessTraceWriter(tmp_path / "t.db", max_queue=full).start()
    try:
        results = [w.submit(r) for r in _records() * 50]  # put_nowait: a full queue never blocks
        assert results.count(False) == w.stats()["dropped"] > 0
    finally:
        w.close(timeout=30)
