"""record_rows: the one builder of a trace's rows, from a typed Decision."""

from __future__ import annotations

import json
import time

import pytest
from cachetools import LRUCache

from routecar.catalog import load_catalog
from routecar.policy import RequestProfile, evaluate, parse_policy
from routecar.traces.record import TraceRecord
from routecar.traces.rows import CANDIDATE_COLUMNS, DecisionParts, rebuild_decision, record_rows

CAT = load_catalog()
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello " * 50}], "max_tokens": 100}
FLOOR = {"rules": [{"id": "floor", "rule": ["cmp", "bench_intelligence", "ge", 0.5], "from": "rule:free"}]}
EU_CHEAP = {"rules": [["eq", "region", "eu"], ["cmp", "est_cost", "le", 0.0002]], "rank": [["desc", "bench_intelligence"]]}
NOTHING = {"rules": [["cmp", "bench_intelligence", "gt", 0.99]]}
POLICIES = [FLOOR, EU_CHEAP, NOTHING]


def decide(policy, body=BODY):
    return evaluate(parse_policy(policy, CAT.registry), CAT, RequestProfile.from_body(body))


def candidates(rows):
    """The candidate entries of one trace as dicts of CANDIDATE_COLUMNS."""
    [cset] = rows["candidate_sets"]
    return [dict(zip(CANDIDATE_COLUMNS, e)) for e in json.loads(cset["entries"])]


@pytest.mark.parametrize("policy", POLICIES)
def test_one_candidate_per_catalog_entry_with_its_verdict_and_rank(policy):
    d = decide(policy)
    rows = record_rows(TraceRecord(trace_id="rt_1", ts=1.0, decision=d))
    got = candidates(rows)
    assert [c["entry_id"] for c in got] == [e.id for e in CAT.entries]
    ranked = [r.entry.id for r in d.ranked]
    for c, (entry, failure) in zip(got, d.verdicts):
        assert c["passed"] == int(failure is None)
        assert c["rank"] == (ranked.index(entry.id) + 1 if entry.id in ranked else None)
        if failure is not None:
            assert (c["failed_index"], c["failed_clause_id"], c["failed_field"]) == (failure.index, failure.id, failure.field)
            assert json.loads(c["failed_value"]) == failure.value
            assert c["est_cost"] is None
        else:
            assert c["est_cost"] == pytest.approx(next(r.est_cost for r in d.ranked if r.entry.id == entry.id))


@pytest.mark.parametrize("policy", POLICIES)
def test_the_decision_columns_rebuild_to_dict(policy):
    d = decide(policy)
    rows = record_rows(TraceRecord(trace_id="rt_1", ts=1.0, decision=d))
    [row] = rows["decisions"]
    stored = {**row, "candidates": [{"entry_id": c["entry_id"], **c} for c in candidates(rows)]}
    assert rebuild_decision(stored) == json.loads(json.dumps(d.to_dict()))
    assert json.loads(row["policy"]) == d.policy.canonical
    assert (row["fingerprint"], row["digest"], row["catalog_version"], row["requested_model"]) == (
        d.policy.fingerprint, d.policy.digest, CAT.version, "gpt-4o")


def test_chosen_entry_is_the_one_that_answered():
    d = decide(FLOOR)
    first, second = d.ranked[0], d.ranked[1]
    attempts = [{"entry": first.entry.id, "provider": first.entry.provider, "model": first.entry.model,
                 "status": 503, "error_class": "server_error", "duration_ms": 3.0},
                {"entry": second.entry.id, "provider": second.entry.provider, "model": second.entry.model,
                 "status": 200, "error_class": None, "duration_ms": 9.0}]
    rows = record_rows(TraceRecord(trace_id="rt_1", ts=1.0, decision=d, attempts=attempts, status=200))
    [row] = rows["decisions"]
    assert (row["chosen_entry"], row["chosen_provider"], row["chosen_model"], row["attempts_count"]) == (
        second.entry.id, second.entry.provider, second.entry.model, 2)
    assert row["est_cost"] == pytest.approx(second.est_cost)
    assert [(a["n"], a["entry_id"], a["status"]) for a in rows["attempts"]] == [
        (1, first.entry.id, 503), (2, second.entry.id, 200)]
    # No attempt succeeded: the selected entry is what the decision chose.
    [failed] = record_rows(TraceRecord(trace_id="rt_2", ts=1.0, decision=d, attempts=attempts[:1]))["decisions"]
    assert failed["chosen_entry"] == first.entry.id


def test_no_candidate_and_no_decision():
    d = decide(NOTHING)
    [row] = record_rows(TraceRecord(trace_id="rt_1", ts=1.0, decision=d))["decisions"]
    assert row["chosen_entry"] is None and json.loads(row["decision"])["selected"] is None
    rows = record_rows(TraceRecord(trace_id="rt_2", ts=1.0, fingerprint="pol_abc123", requested_model="m",
                                   error={"error": {"code": "invalid_policy"}}))
    assert rows["candidate_sets"] == [] and rows["payloads"] == []
    [row] = rows["decisions"]
    assert (row["decision"], row["policy"], row["fingerprint"], row["requested_model"], row["catalog_version"]) == (
        None, None, "pol_abc123", "m", None)


def test_memo_is_reused_and_still_right_for_a_second_request():
    parts = DecisionParts(LRUCache(8))
    p = parse_policy(FLOOR, CAT.registry)
    for content in ("short", "x" * 800_000):  # the second one no longer fits small context windows
        req = RequestProfile.from_body({"messages": [{"role": "user", "content": content}]})
        too_long = {e.id for e in CAT.entries if req.prompt_tokens > e.context_window}
        d = evaluate(p, CAT, req)
        got = candidates(record_rows(TraceRecord(trace_id="rt_2", ts=1.0, decision=d), parts))
        fits = {c["entry_id"] for c in got if c["failed_clause_id"] == "fit:context_window"}
        floor = {e.id for e in CAT.entries if e.bench_intelligence < 0.5}
        assert fits == too_long - floor and (content == "short") == (not fits)  # the floor clause comes first
        assert {c["entry_id"] for c in got if c["failed_clause_id"] == "floor"} == floor
    assert len(parts.memo) == 1


def test_payloads_are_kept_unless_no_log_and_secrets_are_scrubbed():
    d = decide({"rules": [{"id": "sk-live-abcdefgh1234", "rule": ["ne", "provider", "deepseek"]}]})
    rec = TraceRecord(trace_id="rt_1", ts=time.time(), tenant="t", status=200, decision=d,
                      request_body=b'{"q": "hi"}', response_body="{}",
                      error={"error": {"message": "Bearer sk-live-zzzzzzzz9999"}})
    rows = record_rows(rec)
    assert rows["payloads"] == [{"trace_id": "rt_1", "request": '{"q": "hi"}', "response": "{}"}]
    assert "sk-live" not in repr(rows)  # a clause id or an error that looks like a key
    assert "[redacted]" in rows["decisions"][0]["decision"] and "[redacted]" in rows["decisions"][0]["error"]
    hidden = record_rows(TraceRecord(**{**rec.__dict__, "no_log": True}))
    assert hidden["payloads"] == [] and hidden["decisions"][0]["no_log"] == 1


def test_v4_migration_keeps_candidates_written_as_rows(tmp_path, monkeypatch):
    import routecar.traces.store as traces_mod
    from routecar.traces.store import TraceStore

    d = decide(FLOOR)
    rec = TraceRecord(trace_id="rt_old", ts=1.0, decision=d)
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
