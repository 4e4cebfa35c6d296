"""Traces with decision parts (migration `shared_parts`) read back exactly as inline traces did.

The same records, built from real `evaluate(...)` decisions, are written by the
writer before the `shared_parts` migration (tests/legacy_rows.py: each decision inline in its
trace's rows) and by today's store; `routecar explain` (text and --json),
`routecar traces --json` and the SQL views must then print the same for every
trace. The old database is migrated by opening it, so old traces are also shown
to stay readable.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from routecar.catalog import load_catalog
from routecar.cli.main import main
from routecar.policy import Decision, RequestProfile, evaluate, parse_policy
from routecar.policy.dynamic import HealthSnapshot
from routecar.tenants.rules import compile_policy, load_rules
from routecar.tenants.table import load_tenants
from routecar.traces.record import TraceRecord
from routecar.traces.store import MIGRATIONS, TraceStore
from tests.legacy_rows import write_inline

ROOT = Path(__file__).resolve().parents[1]
CAT = load_catalog()
T0 = time.time() - 600
SHORT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Summarise the Q3 churn numbers."}]}
LONG = {"model": "gpt-4o-mini", "max_tokens": 900, "stream": True,
        "messages": [{"role": "user", "content": "x" * 600_000}]}
TOOLS = {"model": "gpt-4o", "tools": [{"type": "function", "function": {"name": "f"}}],
         "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                                   {"type": "image_url", "image_url": {"url": "data:,"}}]}]}
CANARY = "CANARY-5e1f-prompt-quoted-in-a-clause"


def _decide(policy_ir: Any, body: dict[str, Any], health: HealthSnapshot | None = None) -> Decision:
    return evaluate(parse_policy(policy_ir, CAT.registry), CAT, RequestProfile.from_body(body), health)


def _ok(d: Decision, n: int = 0) -> list[dict[str, Any]]:
    e = d.entries[n]
    return [{"entry": e.id, "provider": e.provider, "model": e.model, "status": 200, "error_class": None,
             "duration_ms": 12}]


def _records() -> list[TraceRecord]:
    policies = [json.loads(p.read_text()) for p in sorted((ROOT / "policies" / "examples").glob("*.json"))]
    rules = load_rules(ROOT / "policies" / "rules.yaml")
    policies += [compile_policy(t, rules, CAT.registry).to_ir() for t in load_tenants(ROOT / "policies" / "tenants.yaml")]
    recs: list[TraceRecord] = []

    def add(d: Decision | None, **kw: Any) -> None:
        n = len(recs)
        fields: dict[str, Any] = {
            "tenant": f"t{n % 3}", "mode": "regular", "status": 200, "latency_ms": 40.5 + n, "ttfb_ms": 7.0,
            "usage": {"prompt_tokens": 9, "completion_tokens": n}, "actual_cost": 0.0001 * n, "decision": d,
            "catalog": CAT.to_list() if n == 0 else None, "request_body": json.dumps(SHORT),
            "response_body": b'{"choices": []}', "attempts": _ok(d) if d is not None and d.order else [], **kw}
        recs.append(TraceRecord(trace_id=f"rt_{n:03d}", ts=T0 + n, **fields))

    for body in (SHORT, LONG, TOOLS):
        for p in policies:
            add(_decide(p, body))
    floor = {"rules": [{"id": "floor", "from": "rule:x", "rule": ["cmp", "bench_intelligence", "ge", 0.5]}]}
    d = _decide(floor, SHORT)
    fallback = [{**_ok(d)[0], "status": 503, "error_class": "server_error", "duration_ms": 30.25}, *_ok(d, 1)]
    add(d, attempts=fallback, status=200)
    failed = [{**a, "status": 502, "error_class": "server_error"} for a in fallback]
    add(d, attempts=failed, status=502, outcome="upstream_failed",
        error={"error": {"code": "upstream_failed", "message": "all attempts failed"}})
    nothing = _decide({"rules": [["cmp", "bench_intelligence", "gt", 0.99]]}, SHORT)
    add(nothing, status=400, outcome="no_candidate", error={"error": {"code": "no_candidate", "message": "none"}})
    add(None, status=400, outcome="invalid_policy", fingerprint=None, requested_model="gpt-4o",
        error={"error": {"code": "invalid_policy", "message": "rules[0]: bad"}})
    add(_decide({**floor, "no_log": True}, SHORT), no_log=True)  # payload strings quoted nowhere
    echo = {"rules": [{"id": f"echo {CANARY}", "rule": ["ne", "provider", "nobody"]}], "no_log": True}
    add(_decide(echo, {**SHORT, "messages": [{"role": "user", "content": CANARY}]}), no_log=True,
        request_body=json.dumps({"messages": [{"role": "user", "content": CANARY}]}))
    add(_decide({"rules": [["cmp", "est_cost", "le", 0.0004]]}, LONG))      # per-request failure values
    cooled = HealthSnapshot(frozenset({d.entries[0].id}), {e.id: 10.0 * i for i, e in enumerate(CAT.entries)})
    add(_decide({"rules": [["eq", "healthy", True]], "rank": [["asc", "latency_ms"], ["desc", "healthy"]]},
                SHORT, cooled))
    add(_decide({"rules": [{"id": "Bearer sk-live-0123456789abcdef", "rule": ["ne", "region", "cn"]}]}, SHORT))
    add(_decide(floor, {**SHORT, "max_tokens": 77}), stream=True, status=200, outcome="stream_broken")
    shape_bound = replace(RequestProfile.from_body(SHORT), api_providers=frozenset({"openai", "mistral"}))
    add(evaluate(parse_policy(floor, CAT.registry), CAT, shape_bound), api_in="messages", api_out="chat")
    return recs


RECORDS = _records()
IDS = [r.trace_id for r in RECORDS]


@pytest.fixture(scope="module")
def dbs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("layout")
    inline, parts = tmp / "inline.db", tmp / "parts.db"
    write_inline(inline, RECORDS)
    with TraceStore(inline) as store:  # migrates the old database
        assert store.schema_version == len(MIGRATIONS)
    with TraceStore(parts) as store:
        store.write(RECORDS[:20])
        store.write(RECORDS[20:])
    return inline, parts


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out + err


@pytest.mark.parametrize("trace_id", IDS)
def test_explain_prints_the_same_from_either_layout(capsys, dbs, trace_id) -> None:
    inline, parts = dbs
    for extra in ([], ["--json"]):
        old = _run(capsys, "explain", trace_id, "--db", str(inline), *extra)
        new = _run(capsys, "explain", trace_id, "--db", str(parts), *extra)
        assert new == old


def test_traces_json_is_the_same(capsys, dbs) -> None:
    inline, parts = dbs
    for argv in (["--last", "100"], ["--tenant", "t1"], ["--fingerprint", RECORDS[0].decision.policy.fingerprint]):
        old = _run(capsys, "traces", "--json", "--db", str(inline), *argv)
        assert _run(capsys, "traces", "--json", "--db", str(parts), *argv) == old
        assert old[0] == 0 and len(json.loads(old[1])) > 0


@pytest.mark.parametrize("view", ["candidates", "attempts", "payloads"])
def test_sql_views_read_the_same_from_either_layout(dbs, view) -> None:
    inline, parts = dbs
    sql = f"SELECT * FROM {view} ORDER BY trace_id, n" if view != "payloads" else "SELECT * FROM payloads ORDER BY trace_id"
    with sqlite3.connect(inline) as old, sqlite3.connect(parts) as new:
        rows = old.execute(sql).fetchall()
        assert new.execute(sql).fetchall() == rows and len(rows) > 20


def test_calls_share_their_parts_and_only_the_quoting_no_log_trace_stays_inline(dbs) -> None:
    _, parts_db = dbs
    with sqlite3.connect(parts_db) as db:
        parts = db.execute("SELECT count(*) FROM decision_parts").fetchone()[0]
        referenced = db.execute("SELECT count(DISTINCT part) FROM decisions").fetchone()[0]
        assert parts == referenced < len(RECORDS) - 1
        inline_rows = [r[0] for r in db.execute("SELECT trace_id FROM candidate_sets")]
        assert inline_rows == [next(r.trace_id for r in RECORDS if r.no_log and CANARY in str(r.request_body))]
        assert db.execute("SELECT count(*) FROM decisions WHERE decision IS NOT NULL").fetchone()[0] == 1
    assert CANARY.encode() not in b"".join(p.read_bytes() for p in parts_db.parent.glob("parts.db*"))
