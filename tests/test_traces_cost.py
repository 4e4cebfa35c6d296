"""Traces keep the actual cost, where its price came from, and the token details."""

from __future__ import annotations

import routecar.traces.store as store_mod
from routecar.traces.record import TraceRecord
from routecar.traces.store import TraceStore
from routecar.usage import TokenUsage


def test_usage_details_and_cost_are_stored(tmp_path):
    usage = TokenUsage(input=1200, cached_input=1000, output=300, reasoning=120)
    with TraceStore(tmp_path / "t.db") as store:
        store.write([TraceRecord(trace_id="rt_1", ts=1.0, usage=usage.to_trace(), actual_cost=0.0042,
                                 cost_source="genai-prices"),
                     TraceRecord(trace_id="rt_2", ts=2.0)])
        one, two = store.get("rt_1"), store.get("rt_2")
    assert one is not None and two is not None
    assert (one["prompt_tokens"], one["completion_tokens"], one["cached_tokens"], one["reasoning_tokens"]) \
        == (1200, 300, 1000, 120)
    assert (one["actual_cost"], one["cost_source"]) == (0.0042, "genai-prices")
    assert (two["actual_cost"], two["cost_source"], two["cached_tokens"]) == (None, None, None)


def test_a_v4_database_gains_the_columns(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    everything = store_mod.MIGRATIONS
    monkeypatch.setattr(store_mod, "MIGRATIONS", everything[:4])
    with TraceStore(path) as store:
        store.db.conn.execute("INSERT INTO decisions (trace_id, ts, actual_cost) VALUES ('rt_old', 1.0, NULL)")
        store.db.conn.commit()
    monkeypatch.setattr(store_mod, "MIGRATIONS", everything)
    with TraceStore(path) as store:
        assert store.schema_version == len(everything)
        old = store.get("rt_old")
        assert old is not None and old["cost_source"] is None and "reasoning_tokens" in old


def test_traces_and_explain_show_the_actual_cost(tmp_path, capsys):
    from routecar.cli.main import main

    path = tmp_path / "t.db"
    usage = TokenUsage(input=1200, cached_input=1000, output=300, reasoning=120)
    with TraceStore(path) as store:
        store.write([TraceRecord(trace_id="rt_known", ts=2.0, usage=usage.to_trace(), actual_cost=0.0042,
                                 cost_source="genai-prices"),
                     TraceRecord(trace_id="rt_fake", ts=1.0, usage=usage.to_trace(), actual_cost=0.125,
                                 cost_source="catalog")])
    assert main(["traces", "--db", str(path)]) == 0
    out = capsys.readouterr().out
    assert "0.004200" in out and "0.125000*" in out and "priced at the catalog's price_in/price_out" in out
    assert main(["explain", "rt_known", "--db", str(path)]) == 0
    out = " ".join(capsys.readouterr().out.split())   # rich wraps long lines
    assert "tokens=1200+300 (1000 cached, 120 reasoning)" in out
    assert "actual cost=0.004200 (genai-prices price)" in out
    assert main(["explain", "rt_known", "--db", str(path), "--json"]) == 0
    trace = __import__("json").loads(capsys.readouterr().out)["trace"]
    assert (trace["actual_cost"], trace["cost_source"], trace["cached_tokens"]) == (0.0042, "genai-prices", 1000)
