from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from routecar.catalog import parse_catalog
from routecar.policy import Decision, RequestProfile, evaluate, parse_policy
from routecar.traces.record import TraceRecord
from routecar.traces.scrub import scrub
from routecar.traces.store import MIGRATIONS, TraceStore, default_traces_path, parse_since
from routecar.traces.writer import TraceWriter


def _entry(id_: str, bench: float, price: float, caps: list[str]) -> dict[str, Any]:
    provider, model = id_.split("/")
    return {"id": id_, "provider": provider, "model": model, "region": "us", "bench_intelligence": bench,
            "price_in": price, "price_out": 2 * price, "context_window": 100_000, "max_output": 8192,
            "capabilities": caps}


CATALOG = parse_catalog([
    _entry("openai/gpt-5.5", 0.6, 1.0, ["tools"]),
    _entry("groq/llama-4", 0.55, 2.0, ["tools", "json"]),
    _entry("mistral/mistral-small", 0.41, 0.1, ["tools"]),   # below the floor
    _entry("acme/tiny", 0.7, 0.05, ["json"]),                # no tools: fails the fit check
], "<test catalog>")
POLICY = {"rules": [{"id": "floor", "from": "rule:free-floor", "rule": ["cmp", "bench_intelligence", "ge", 0.5]}]}
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi " * 100}],
        "tools": [{"type": "function", "function": {"name": "f"}}]}


def make_decision(policy: Any = POLICY, body: dict[str, Any] = BODY) -> Decision:
    return evaluate(parse_policy(policy, CATALOG.registry), CATALOG, RequestProfile.from_body(body))


def make_record(trace_id: str = "tr_1", ts: float = 1000.0, **kw: Any) -> TraceRecord:
    fields: dict[str, Any] = dict(
        tenant="acme", mode="regular", status=200, outcome="ok", latency_ms=812.5,
        ttfb_ms=120.0, usage={"prompt_tokens": 42, "completion_tokens": 7},
        actual_cost=0.0029, decision=make_decision(),
        attempts=[{"entry": "openai/gpt-5.5", "provider": "openai", "model": "gpt-5.5",
                   "status": 503, "error_class": "server_error", "duration_ms": 40.0},
                  {"entry": "groq/llama-4", "provider": "groq", "model": "llama-4",
                   "status": 200, "error_class": None, "duration_ms": 700.0}],
        request_body=b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}',
        response_body='{"choices":[{"message":{"content":"hello"}}]}')
    fields.update(kw)
    return TraceRecord(trace_id=trace_id, ts=ts, **fields)


@pytest.fixture
def store(tmp_path: Path):
    with TraceStore(tmp_path / "traces.db", clock=lambda: 5000.0) as s:
        yield s


def raw_bytes(db_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in
                    (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")) if p.exists())


def test_round_trip_with_decision(store: TraceStore) -> None:
    d = make_decision()
    store.write([make_record()])
    t = store.get("tr_1")
    assert t is not None
    assert t["decision"] == d.to_dict()
    assert [c["id"] for c in t["decision"]["candidates"]] == [e.id for e in CATALOG.entries]
    assert (t["tenant"], t["fingerprint"], t["digest"], t["catalog_version"]) == (
        "acme", d.policy.fingerprint, d.policy.digest, CATALOG.version)
    assert json.loads(t["policy"]) == d.policy.canonical
    # the entry that answered, after falling back from the selected one
    groq_cost = d.ranked[1].est_cost
    assert (t["chosen_entry"], t["chosen_model"], t["chosen_provider"], t["est_cost"]) == (
        "groq/llama-4", "llama-4", "groq", groq_cost)
    assert (t["requested_model"], t["status"], t["outcome"], t["attempts_count"]) == (
        "gpt-4o", 200, "ok", 2)
    assert (t["prompt_tokens"], t["completion_tokens"], t["no_log"], t["stream"]) == (42, 7, 0, 0)
    assert [c["rank"] for c in t["candidates"]] == [1, 2, None, None]
    assert [c["passed"] for c in t["candidates"]] == [1, 1, 0, 0]
    floor, fit = t["candidates"][2], t["candidates"][3]
    assert (floor["failed_index"], floor["failed_clause_id"], floor["failed_field"], floor["failed_value"]) == (
        0, "floor", "bench_intelligence", "0.41")
    assert (fit["failed_index"], fit["failed_clause_id"], fit["failed_value"]) == (None, "fit:tools", '["json"]')
    assert [(a["n"], a["entry_id"], a["status"]) for a in t["attempts"]] == [
        (1, "openai/gpt-5.5", 503), (2, "groq/llama-4", 200)]
    assert t["payload"] == {
        "request": '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}',
        "response": '{"choices":[{"message":{"content":"hello"}}]}'}
    assert store.get("missing") is None


def test_record_without_decision(store: TraceStore) -> None:
    error = {"error": {"message": "bad policy", "type": "invalid_request_error",
                       "code": "invalid_policy", "param": "rules[0]"}}
    store.write([TraceRecord("tr_bad", 1.0, tenant="acme", status=400, outcome="invalid_policy",
                             fingerprint=None, requested_model="gpt-4o", error=error)])
    t = store.get("tr_bad")
    assert t is not None and t["decision"] is None and t["candidates"] == []
    assert (t["error"], t["requested_model"], t["outcome"]) == (error, "gpt-4o", "invalid_policy")
    assert t["payload"] is None


def test_rewrite_same_trace_id_replaces_children(store: TraceStore) -> None:
    store.write([make_record()])
    store.write([make_record(attempts=[])])
    t = store.get("tr_1")
    assert t is not None and t["attempts"] == [] and len(t["candidates"]) == 4


def test_rewriting_a_trace_leaves_none_of_its_old_rows(store: TraceStore) -> None:
    store.write([make_record("tr_1"), make_record("tr_2")])
    store.write([make_record("tr_1", no_log=True, decision=None)])  # no payload, no decision now
    t = store.get("tr_1")
    assert t is not None and t["payload"] is None and t["decision"] is None and t["candidates"] == []
    assert [r["trace_id"] for r in store.db["payloads"].rows] == ["tr_2"]
    assert store.get("tr_2")["payload"] is not None


def test_no_log_leaves_no_payload_anywhere(tmp_path: Path) -> None:
    path = tmp_path / "traces.db"
    canary, logged = "CANARY-7f3a9c-secret-prompt", "LOGGED-1b2c3d-visible"
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": canary}]})
    # A caller that copied its prompt into a clause id: the decision must not carry it either.
    decision = make_decision({"rules": [{"id": f"echo: {canary}", "rule": ["cmp", "bench_intelligence", "ge", 0.5]}],
                              "no_log": True})
    writer = TraceWriter(path).start()
    writer.submit(make_record("tr_nolog", no_log=True, request_body=body.encode(),
                              response_body=f'{{"x":"{canary}-reply"}}', decision=decision,
                              error={"error": {"message": f"upstream said {canary}"}}))
    writer.submit(make_record("tr_logged", request_body=logged))
    assert writer.close()
    data = raw_bytes(path)
    assert logged.encode() in data  # the search does find payloads that are stored
    assert canary.encode() not in data
    with TraceStore(path) as store:
        t = store.get("tr_nolog")
        assert t is not None and t["payload"] is None and t["no_log"] == 1
        assert t["decision"]["policy"]["clauses"][0]["id"] == "[no_log]"
        assert t["candidates"][2]["failed_clause_id"] == "[no_log]"
        assert t["decision"]["selected"] == "openai/gpt-5.5"  # the decision is still traced
        assert t["error"] == {"error": {"message": "[no_log]"}}
    assert canary.encode() not in raw_bytes(path)


@pytest.mark.parametrize("text, expected", [
    ("Authorization: Bearer sk-live-123456789", "Authorization: [redacted]"),
    ('{"Authorization": "Bearer abc.def"}', '{"Authorization": "[redacted]"}'),
    ("proxy-authorization: Basic Zm9vOmJhcg==\r\nHost: x", "proxy-authorization: [redacted]\r\nHost: x"),
    ('{"api-key":"0123abcd","x":1}', '{"api-key":"[redacted]","x":1}'),
    ('{\\"x-api-key\\": \\"0123abcd\\"}', '{\\"x-api-key\\": \\"[redacted]\\"}'),
    ("token was bearer abcdefgh here", "token was bearer [redacted] here"),
    ("key sk-proj-AbC_12-xyz9 leaked", "key [redacted] leaked"),
    ('{"api_key": null}', '{"api_key": null}'),
    ("a short sk-123 and a plain sentence", "a short sk-123 and a plain sentence"),
])
def test_scrub(text: str, expected: str) -> None:
    assert scrub(text) == expected
    assert scrub(expected) == expected


def test_secrets_never_stored(tmp_path: Path) -> None:
    path = tmp_path / "traces.db"
    with TraceStore(path) as store:
        store.write([make_record(
            tenant="sk-tenantkey99999",
            response_body="upstream echoed Bearer sk-live-123456789 back",
            request_body=b'{"api_key": "plainsecret42", "messages": []}',
            error={"error": {"message": "bad key sk-live-123456789"},
                   "headers": {"Authorization": "Bearer sk-live-123456789",
                               "x-api-key": "plainsecret42"}},
            attempts=[{"entry": "openai/gpt-5.5", "provider": "openai", "model": "gpt-5.5",
                       "status": 401, "error_class": "auth: Bearer sk-live-123456789",
                       "duration_ms": 1.0}])])
        t = store.get("tr_1")
        assert t is not None
        assert t["payload"]["response"] == "upstream echoed Bearer [redacted] back"
        assert t["error"]["headers"] == {"Authorization": "[redacted]", "x-api-key": "[redacted]"}
    data = raw_bytes(path)
    for secret in (b"sk-live-123456789", b"live-123456789", b"plainsecret42", b"sk-tenantkey"):
        assert secret not in data


def test_concurrent_submits_all_written(tmp_path: Path) -> None:
    path = tmp_path / "traces.db"
    writer = TraceWriter(path, max_queue=20000, flush_interval_s=0.01).start()
    results: list[bool] = []

    def submit_many(t: int) -> None:
        results.extend(writer.submit(TraceRecord(f"t{t}-{i}", float(i), tenant=f"ten{t}",
                                                 attempts=[{"entry": "e", "status": 200}]))
                       for i in range(500))

    threads = [threading.Thread(target=submit_many, args=(t,)) for t in range(20)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert writer.close(timeout=15)
    assert all(results) and len(results) == 10000
    stats = writer.stats()
    assert (stats["written"], stats["dropped"], stats["errors"], stats["queued"]) == (10000, 0, 0, 0)
    with TraceStore(path) as store:
        assert store.db["decisions"].count == 10000
        assert store.db["attempts"].count == 10000


def test_close_flushes_everything_and_then_refuses(tmp_path: Path) -> None:
    # a long flush interval and big batches: only close() can have written these
    writer = TraceWriter(tmp_path / "t.db", batch_size=10000, flush_interval_s=5).start()
    for i in range(300):
        assert writer.submit(TraceRecord(f"r{i}", float(i)))
    assert writer.close(timeout=10)
    assert writer.stats()["written"] == 300
    assert writer.submit(TraceRecord("late", 1.0)) is False
    with TraceStore(tmp_path / "t.db") as store:
        assert store.db["decisions"].count == 300


def test_close_without_start_writes_in_caller(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path / "t.db")
    writer.submit(TraceRecord("r", 1.0))
    assert writer.close()
    assert writer.stats()["written"] == 1


def test_full_queue_drops_without_blocking(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path / "t.db", max_queue=5)  # not started: nothing drains
    started = time.monotonic()
    accepted = [writer.submit(TraceRecord(f"r{i}", float(i))) for i in range(50)]
    assert time.monotonic() - started < 1.0
    assert accepted == [True] * 5 + [False] * 45
    assert writer.stats()["dropped"] == 45 and writer.stats()["queued"] == 5
    writer.close()
    assert writer.stats()["written"] == 5


def test_disk_error_is_counted_and_writer_recovers(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a file where the directory should be")
    writer = TraceWriter(blocker / "traces.db", flush_interval_s=0.01).start()
    assert writer.submit(TraceRecord("lost", 1.0))
    assert writer.flush(timeout=5)
    stats = writer.stats()
    assert stats["errors"] >= 1 and stats["dropped"] == 1 and stats["written"] == 0
    assert stats["last_error"]
    blocker.unlink()  # the disk comes back: the same writer serves again
    assert writer.submit(TraceRecord("kept", 2.0))
    assert writer.flush(timeout=5)
    assert writer.stats()["written"] == 1
    # the database vanishes under an open connection: reopened, not written into the void
    for p in blocker.iterdir():
        p.unlink()
    blocker.rmdir()
    blocker.write_text("blocked again")
    assert writer.submit(TraceRecord("lost2", 3.0))
    assert writer.flush(timeout=5)
    assert writer.stats()["errors"] >= 2 and writer.stats()["dropped"] == 2
    assert writer.close()


def test_prune_by_age_and_rows(store: TraceStore) -> None:
    store.write([make_record(f"r{i}", ts=float(i)) for i in range(10)])
    assert store.prune(max_age_s=3, now=10.0) == 7  # keeps ts 7, 8, 9
    assert [r["trace_id"] for r in store.query()] == ["r9", "r8", "r7"]
    assert store.prune(max_rows=1) == 2
    assert [r["trace_id"] for r in store.query()] == ["r9"]
    for table in ("candidates", "attempts", "payloads"):
        assert {r["trace_id"] for r in store.db[table].rows} == {"r9"}
    assert store.prune() == 0


def _poll(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_writer_prunes_on_schedule(tmp_path: Path) -> None:
    path, now = tmp_path / "t.db", [100.0]

    def count() -> int:
        with TraceStore(path) as store:
            return store.db["decisions"].count

    writer = TraceWriter(path, max_rows=3, prune_every_s=60, clock=lambda: now[0], flush_interval_s=0.01).start()
    try:
        # The first idle tick prunes (and creates the database): the schedule starts at t=100.
        assert _poll(path.exists)
        for i in range(10):
            writer.submit(TraceRecord(f"r{i}", float(i)))
        assert writer.flush()
        writer.submit(TraceRecord("r10", 10.0))  # written after the prune check that followed r0..r9
        assert writer.flush()
        assert count() == 11  # 59 s later nothing is pruned yet
        now[0] = 159.0
        writer.submit(TraceRecord("r11", 11.0))
        assert writer.flush() and count() == 12
        now[0] = 160.5  # 60 s after the last prune: the next tick prunes
        assert _poll(lambda: count() == 3)
    finally:
        assert writer.close()
    with TraceStore(path) as store:
        assert [r["trace_id"] for r in store.query()] == ["r11", "r10", "r9"]


def test_migrations_idempotent_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    with TraceStore(path) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        store.write([make_record()])
    with TraceStore(path) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert store.db["migrations"].count == len(MIGRATIONS)
        assert store.get("tr_1") is not None
        assert {"idx_decisions_ts", "idx_decisions_tenant_ts"} <= {
            i.name for i in store.db["decisions"].indexes}


def test_query_filters(store: TraceStore) -> None:
    store.write([make_record("a1", ts=1.0, tenant="a"),
                 make_record("b1", ts=2.0, tenant="b", decision=None, fingerprint="pol_other"),
                 make_record("a2", ts=3.0, tenant="a"),
                 make_record("a3", ts=4.0, tenant="a")])
    assert [r["trace_id"] for r in store.query()] == ["a3", "a2", "b1", "a1"]
    assert [r["trace_id"] for r in store.query(tenant="a", last=2)] == ["a3", "a2"]
    assert [r["trace_id"] for r in store.query(fingerprint="pol_other")] == ["b1"]
    assert [r["trace_id"] for r in store.query(fingerprint=make_decision().policy.fingerprint, since_ts=3.0)] == [
        "a3", "a2"]
    assert store.query(tenant="nobody") == []


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("30m", 1800), ("1h", 3600), ("2d", 172800), ("1w", 604800), ("1.5h", 5400)])
def test_parse_since(text: str, seconds: float) -> None:
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "1y", "-1h", "1 hour"])
def test_parse_since_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .*expected a number followed by"):
        parse_since(text)


def test_default_traces_path() -> None:
    assert default_traces_path({"ROUTECAR_HOME": "/srv/rc", "HOME": "/h"}) == Path(
        "/srv/rc/traces.db")
    assert default_traces_path({"HOME": "/h"}) == Path("/h/.routecar/traces.db")
    assert default_traces_path({"ROUTECAR_HOME": "", "HOME": "/h"}) == Path(
        "/h/.routecar/traces.db")


def test_malformed_record_does_not_cost_its_batch(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path / "t.db", batch_size=100)
    writer.submit(TraceRecord("good1", 1.0))
    writer.submit(TraceRecord("bad", 2.0, attempts=["not a dict"]))  # type: ignore[list-item]
    writer.submit(TraceRecord("good2", 3.0))
    assert writer.close()
    stats = writer.stats()
    assert (stats["written"], stats["dropped"], stats["errors"]) == (2, 1, 1)
    assert "AttributeError" in stats["last_error"]


def test_drops_and_disk_errors_are_logged_once_not_per_record(tmp_path: Path, caplog) -> None:
    caplog.set_level("WARNING", logger="routecar.traces")
    full = TraceWriter(tmp_path / "t.db", max_queue=1)  # not started: the queue fills at once
    for i in range(5):
        full.submit(TraceRecord(f"r{i}", float(i)))
    drops = [r for r in caplog.records if "dropped so far" in r.getMessage()]
    assert len(drops) == 1 and "1 trace(s) dropped" in drops[0].getMessage()
    full.close()
    blocker = tmp_path / "data"
    blocker.write_text("a file where the directory should be")
    broken = TraceWriter(blocker / "traces.db", flush_interval_s=0.01, linger_s=0).start()
    for i in range(3):
        assert broken.submit(TraceRecord(f"x{i}", float(i)))
        assert broken.flush(timeout=5)
    errors = [r for r in caplog.records if "cannot write traces" in r.getMessage()]
    assert len(errors) == 1 and str(blocker) in errors[0].getMessage()
    assert broken.stats()["errors"] == 3
    broken.close()


def test_the_writer_thread_is_named_for_the_os(tmp_path: Path) -> None:
    """top -H, ps -L and bench_proxy's per-thread CPU read the OS thread name (Linux)."""
    import os
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("thread names in /proc are Linux")
    writer = TraceWriter(tmp_path / "t.db").start()
    try:
        assert _poll(lambda: any((t / "comm").read_text().strip() == "routecar-traces"
                                 for t in Path(f"/proc/{os.getpid()}/task").iterdir()))
    finally:
        writer.close()
