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
