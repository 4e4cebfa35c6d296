"""The fast Decision -> rows path writes exactly what the dict path writes."""

from __future__ import annotations

import json
import time

import pytest
from cachetools import LRUCache

from routecar.catalog import load_catalog
from routecar.policy import RequestProfile, evaluate, parse_policy
from routecar.traces.record import TraceRecord
from routecar.traces.rows import CANDIDATE_COLUMNS, DecisionParts, record_rows

CAT = load_catalog()
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello " * 50}], "max_tokens": 100}
POLICIES = [
    {"rules": [{"id": "floor", "rule": ["cmp", "bench_intelligence", "ge", 0.5], "from": "rule:free"}]},
    {"rules": [["eq", "region", "eu"], ["cmp", "est_cost", "le", 0.0002]], "rank": [["desc", "bench_intelligence"]]},
    {"rules": [["cmp", "bench_intelligence", "gt", 0.99]]},  # no candidate
    {"rules": [{"id": "sk-live-abcdefgh1234", "rule": ["ne", "provider", "deepseek"]}], "no_log": True},
]


@pytest.mark.parametrize("policy", POLICIES)
def test_fast_path_rows_equal_dict_path_rows(policy):
    d = evaluate(parse_policy(policy, CAT.registry), CAT, RequestProfile.from_body(BODY))
    attempts = [{"entry": d.selected.entry.id, "provider": "x", "model": "m", "status": 200,
                 "error_class": "ok", "duration_ms": 1.0}] if d.order else []
    rec = TraceRecord(trace_id="rt_1", ts=time.time(), tenant="t", no_log=bool(policy.get("no_log")),
                      status=200, decision=d, attempts=attempts, usage={"prompt_tokens": 3},
                      error={"error": {"message": "Bearer sk-live-zzzzzzzz9999"}})
    fast = record_rows(rec, DecisionParts(LRUCache(8)))
    slow = record_rows(TraceRecord(**{**rec.__dict__, "decision": d.to_dict()}))
    assert fast == slow
    assert "sk-live" not in repr(fast)  # a clause id or error that looks like a key is scrubbed


def test_memo_is_reused_and_still_right_for_a_second_request():
    parts = DecisionParts(LRUCache(8))
    p = parse_policy(POLICIES[0], CAT.registry)
    for content in ("short", "x" * 400_000):  # the second one no longer fits small context windows
        d = evaluate(p, CAT, RequestProfile.from_body({"messages": [{"role": "user", "content": content}]}))
        rec = TraceRecord(trace_id="rt_2", ts=1.0, decision=d)
        assert record_rows(rec, parts) == record_rows(TraceRecord(trace_id="rt_2", ts=1.0, decision=d.to_dict()))
    assert len(parts.memo) == 1


def test_v4_migration_keeps_candidates_written_as_rows(tmp_path, monkeypatch):
    import routecar.traces.store as traces_mod
    from routecar.traces.store import TraceStore

    d = evaluate(parse_policy(POLICIES[0], CAT.registry), CAT, RequestProfile.from_body(BODY))
    rec = TraceRecord(trace_id="rt_old", ts=1.0, decision=d.to_dict())
    path = tmp_path / "old.db"
    all_migrations = traces_mod.MIGRATIONS
    # A database written before migration 4: one candidates row per entry.
    monkeypatch.setattr(traces_mod, "MIGRATIONS", all_migrations[:3])
    monkeypatch.setattr(traces_mod, "_CHILDREN", ("candidates", "attempts", "payloads"))
    old_rows = record_rows(rec)
    cols = ("trace_id", *CANDIDATE_COLUMNS)
    entries = json.loads(old_rows["candidate_sets"][0]["entries"])
    with TraceStore(path) as store:
        assert store.schema_version == 3
        store.db.conn.executemany(f"INSERT INTO candidates ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                                  [("rt_old", *e) for e in entries])
        store.db.conn.execute("INSERT INTO decisions (trace_id, ts, decision, policy) VALUES (?, ?, ?, ?)",
                              ("rt_old", 1.0, old_rows["decisions"][0]["decision"], old_rows["decisions"][0]["policy"]))
        store.db.conn.commit()
    monkeypatch.setattr(traces_mod, "MIGRATIONS", all_migrations)
    monkeypatch.setattr(traces_mod, "_CHILDREN", ("candidate_sets", "attempts", "payloads"))
    with TraceStore(path) as store:
        assert store.schema_version == len(all_migrations)
        got = store.get("rt_old")
        assert [[c[k] for k in ("entry_id", "passed", "failed_clause_id", "rank")] for c in got["candidates"]] \
            == [[e[0], e[3], e[5], e[9]] for e in entries]
        # SQLite's JSON keeps 15 significant digits of a REAL
        costs = [(c["est_cost"], e[10]) for c, e in zip(got["candidates"], entries)]
        assert all((a is None and b is None) or a == pytest.approx(b, rel=1e-12) for a, b in costs)
        assert got["decision"]["candidates"] == d.to_dict()["candidates"]
