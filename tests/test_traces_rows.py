"""record_rows: the one builder of a trace's rows, from a typed Decision; decision parts."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routecar.catalog import load_catalog
from routecar.policy import RequestProfile, evaluate, parse_policy
from routecar.policy.request import usd, usd_sql
from routecar.traces.parts import PART_COLUMNS, PartCache, legacy_columns
from routecar.traces.readback import rebuild_decision
from routecar.traces.record import TraceRecord
from routecar.traces.rows import record_rows
from routecar.traces.store import TraceStore

CAT = load_catalog()
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello " * 50}], "max_tokens": 100}
FLOOR = {"rules": [{"id": "floor", "rule": ["cmp", "bench_intelligence", "ge", 0.5], "from": "rule:free"}]}
EU_CHEAP = {"rules": [["eq", "region", "eu"], ["cmp", "est_cost", "le", 0.0002]], "rank": [["desc", "bench_intelligence"]]}
NOTHING = {"rules": [["cmp", "bench_intelligence", "gt", 0.99]]}
POLICIES = [FLOOR, EU_CHEAP, NOTHING]


def decide(policy, body=BODY):
    return evaluate(parse_policy(policy, CAT.registry), CAT, RequestProfile.from_body(body))


def part_candidates(rows):
    """The candidate entries of one trace's decision part as dicts of PART_COLUMNS."""
    [part] = rows["decision_parts"]
    return [dict(zip(PART_COLUMNS, e)) for e in json.loads(part.candidates)]


@pytest.mark.parametrize("policy", POLICIES)
def test_one_candidate_per_catalog_entry_with_its_verdict_rank_and_prices(policy):
    d = decide(policy)
    rows = record_rows(TraceRecord(trace_id="rt_1", ts=1.0, decision=d))
    got = part_candidates(rows)
    assert [c["entry_id"] for c in got] == [e.id for e in CAT.entries]
    ranked = [r.entry.id for r in d.ranked]
    for c, (entry, failure) in zip(got, d.verdicts):
        assert c["passed"] == int(failure is None)
        assert c["rank"] == (ranked.index(entry.id) + 1 if entry.id in ranked else None)
        if failure is not None:
            assert (c["failed_index"], c["failed_clause_id"], c["failed_field"]) == (failure.index, failure.id, failure.field)
            assert json.loads(c["failed_value"]) == failure.value
            assert c["price_in"] is None and c["price_out"] is None
        else:
            assert (c["price_in"], c["price_out"]) == (entry.price_in, entry.price_out)
    [row] = rows["decisions"]
    assert row["part"] == rows["decision_parts"][0].key and row["costs"] is None  # the costs are usd() of the prices
    assert json.loads(row["request"]) == [d.request.prompt_tokens, 100, 100, 0, 0, 0]
    assert row["decision"] is row["policy"] is row["catalog_version"] is None  # they are in the part


@pytest.mark.parametrize("policy", POLICIES)
def test_the_parts_rebuild_to_dict(policy):
    d = decide(policy)
    rows = record_rows(TraceRecord(trace_id="rt_1", ts=1.0, decision=d))
    [part] = rows["decision_parts"]
    decision, entries = legacy_columns(part.policy.policy, part.policy.summary, part.catalog_version,
                                       json.loads(part.candidates), json.loads(part.keys), d.request,
                                       part.costs_of(d.request))
    trace = {"decision": decision, "policy": part.policy.policy,
             "candidates": [dict(zip(("entry_id", "provider", "model", "passed", "failed_index", "failed_clause_id",
                                      "failed_rule", "failed_field", "failed_value"), e)) for e in entries]}
    assert rebuild_decision(trace) == json.loads(json.dumps(d.to_dict()))
    assert (part.policy.fingerprint, part.policy.digest, part.catalog_version) == (
        d.policy.fingerprint, d.policy.digest, CAT.version)
    assert rows["decisions"][0]["fingerprint"] == d.policy.fingerprint


def test_chosen_entry_is_the_one_that_answered():
    d = decide(FLOOR)
    first, second = d.ranked[0], d.ranked[1]
    attempts = [{"entry": first.entry.id, "provider": first.entry.provider, "model": first.entry.model,
                 "status": 503, "error_class": "server_error", "duration_ms": 3},
                {"entry": second.entry.id, "provider": second.entry.provider, "model": second.entry.model,
                 "status": 200, "error_class": None, "duration_ms": 9.0}]
    rows = record_rows(TraceRecord(trace_id="rt_1", ts=1.0, decision=d, attempts=attempts, status=200))
    [row] = rows["decisions"]
    assert (row["chosen_entry"], row["chosen_provider"], row["chosen_model"], row["attempts_count"]) == (
        second.entry.id, second.entry.provider, second.entry.model, 2)
    assert row["est_cost"] == second.est_cost
    # the attempts, in the row: durations as a REAL column would keep them
    assert json.loads(row["attempt_list"]) == [
        [first.entry.id, first.entry.provider, first.entry.model, 503, "server_error", 3.0],
        [second.entry.id, second.entry.provider, second.entry.model, 200, None, 9.0]]
    # No attempt succeeded: the selected entry is what the decision chose.
    [failed] = record_rows(TraceRecord(trace_id="rt_2", ts=1.0, decision=d, attempts=attempts[:1]))["decisions"]
    assert failed["chosen_entry"] == first.entry.id


def test_no_candidate_and_no_decision():
    d = decide(NOTHING)
    rows = record_rows(TraceRecord(trace_id="rt_1", ts=1.0, decision=d))
    assert rows["decisions"][0]["chosen_entry"] is None
    assert all(c["rank"] is None for c in part_candidates(rows))
    rows = record_rows(TraceRecord(trace_id="rt_2", ts=1.0, fingerprint="pol_abc123", requested_model="m",
                                   error={"error": {"code": "invalid_policy"}}))
    assert rows["decision_parts"] == [] and rows["payloads"] == [] and rows["candidate_sets"] == []
    [row] = rows["decisions"]
    assert (row["part"], row["decision"], row["fingerprint"], row["requested_model"], row["attempt_list"]) == (
        None, None, "pol_abc123", "m", None)


def test_a_part_is_shared_by_calls_decided_alike_and_only_by_them():
    cache = PartCache()
    p = parse_policy(FLOOR, CAT.registry)

    def req(content: str) -> RequestProfile:
        return RequestProfile.from_body({"messages": [{"role": "user", "content": content}]})

    short = cache.decision(evaluate(p, CAT, req("short")))
    assert cache.decision(evaluate(p, CAT, req("also short"))) is short  # decided alike: no JSON built
    big = req("x" * 800_000)  # no longer fits small context windows
    huge = cache.decision(evaluate(p, CAT, big))
    assert huge.key != short.key
    got = {c[0]: c[5] for c in json.loads(huge.candidates)}
    too_long = {e.id for e in CAT.entries if big.prompt_tokens > e.context_window}
    floor = {e.id for e in CAT.entries if e.bench_intelligence < 0.5}
    assert {i for i, f in got.items() if f == "fit:context_window"} == too_long - floor  # the floor comes first
    assert {i for i, f in got.items() if f == "floor"} == floor
    assert len(cache) == 2 and huge.policy is short.policy
    empty = PartCache()  # the cache handed to record_rows is the one filled, even while empty
    record_rows(TraceRecord(trace_id="rt_1", ts=1.0, decision=decide(FLOOR)), empty)
    assert len(empty) == 1


def test_costs_the_prices_do_not_reproduce_are_kept_in_the_row(tmp_path):
    d = decide(FLOOR)
    odd = replace(d, costs=tuple(c * 3 for c in d.costs))
    [row] = record_rows(TraceRecord(trace_id="rt_1", ts=1.0, decision=odd))["decisions"]
    assert json.loads(row["costs"]) == list(odd.costs)
    with TraceStore(tmp_path / "t.db") as store:
        store.write([TraceRecord(trace_id="rt_1", ts=1.0, decision=odd)])
        got = store.get("rt_1")
        assert [r["est_cost"] for r in got["decision"]["ranked"]] == list(odd.costs)
        view = [r[0] for r in store.db.execute("SELECT est_cost FROM candidates WHERE rank IS NOT NULL ORDER BY rank")]
        assert view == list(odd.costs)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2_000_000), st.integers(0, 200_000), st.floats(0, 500, allow_nan=False),
       st.floats(0, 500, allow_nan=False))
def test_the_sql_cost_formula_is_usd_to_the_last_bit(pt, ot, pin, pout):
    with sqlite3.connect(":memory:") as db:
        [(got,)] = db.execute(f"SELECT {usd_sql(':pt', ':ot', ':pin', ':pout')}",
                              {"pt": pt, "ot": ot, "pin": pin, "pout": pout})
    assert got == usd(pt, ot, pin, pout)


def test_payloads_are_kept_unless_no_log_and_secrets_are_scrubbed():
    d = decide({"rules": [{"id": "sk-live-abcdefgh1234", "rule": ["ne", "provider", "deepseek"]}]})
    rec = TraceRecord(trace_id="rt_1", ts=time.time(), tenant="t", status=200, decision=d,
                      request_body=b'{"q": "hi"}', response_body="{}",
                      attempts=[{"entry": "a", "error_class": "auth: Bearer sk-live-zzzzzzzz9999"}],
                      error={"error": {"message": "Bearer sk-live-zzzzzzzz9999"}})
    rows = record_rows(rec)
    assert rows["payloads"] == [{"trace_id": "rt_1", "request": '{"q": "hi"}', "response": "{}"}]
    texts = [rows["decision_parts"][0].candidates, rows["decision_parts"][0].policy.summary,
             json.dumps(rows["decisions"])]
    assert "sk-live" not in "".join(texts)  # a clause id, an attempt or an error that looks like a key
    assert all("[redacted]" in t for t in texts)
    hidden = record_rows(TraceRecord(**{**rec.__dict__, "no_log": True}))
    assert hidden["payloads"] == [] and hidden["decisions"][0]["no_log"] == 1


def test_v4_migration_keeps_candidates_written_as_rows(tmp_path, monkeypatch):
    import routecar.traces.store as traces_mod
    from tests.legacy_rows import record_rows as v4_rows

    d = decide(FLOOR)
    rec = TraceRecord(trace_id="rt_old", ts=1.0, decision=d)
    path = tmp_path / "old.db"
    all_migrations = traces_mod.MIGRATIONS
    # A database written before migration 4: one candidates row per entry.
    monkeypatch.setattr(traces_mod, "MIGRATIONS", all_migrations[:3])
    old_rows = v4_rows(rec)
    cols = ("trace_id", "entry_id", "provider", "model", "passed", "failed_index", "failed_clause_id",
            "failed_rule", "failed_field", "failed_value", "rank", "est_cost")
    entries = json.loads(old_rows["candidate_sets"][0]["entries"])
    with TraceStore(path) as store:
        assert store.schema_version == 3
        store.db.conn.executemany(f"INSERT INTO candidates ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                                  [("rt_old", *e) for e in entries])
        store.db.conn.execute("INSERT INTO decisions (trace_id, ts, decision, policy) VALUES (?, ?, ?, ?)",
                              ("rt_old", 1.0, old_rows["decisions"][0]["decision"], old_rows["decisions"][0]["policy"]))
        store.db.conn.commit()
    monkeypatch.setattr(traces_mod, "MIGRATIONS", all_migrations)
    with TraceStore(path) as store:
        assert store.schema_version == len(all_migrations)
        got = store.get("rt_old")
        assert [[c[k] for k in ("entry_id", "passed", "failed_clause_id", "rank")] for c in got["candidates"]] \
            == [[e[0], e[3], e[5], e[9]] for e in entries]
        # SQLite's JSON keeps 15 significant digits of a REAL
        costs = [(c["est_cost"], e[10]) for c, e in zip(got["candidates"], entries)]
        assert all((a is None and b is None) or a == pytest.approx(b, rel=1e-12) for a, b in costs)
        assert got["decision"]["candidates"] == d.to_dict()["candidates"]
