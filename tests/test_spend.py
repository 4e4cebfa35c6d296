"""`routecar spend`: the aggregate, and the command's table, JSON, CSV and chart."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest

from routecar.cli.chart import stacks
from routecar.cli.main import main
from routecar.cli.spend import parse_when
from routecar.traces.record import TraceRecord
from routecar.traces.spend import SpendRow, spend
from routecar.traces.store import TraceStore

DAY1 = dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC).timestamp()
DAY2 = dt.datetime(2026, 3, 2, 23, 59, tzinfo=dt.UTC).timestamp()
DAY3 = dt.datetime(2026, 3, 3, 0, 1, tzinfo=dt.UTC).timestamp()


def attempt(provider: str, model: str, status: int = 200, error: str = "ok") -> dict:
    return {"entry": f"{provider}/{model}", "provider": provider, "model": model, "status": status,
            "error_class": error, "duration_ms": 5.0}


def rec(trace_id: str, ts: float, tenant: str | None, *attempts: dict, outcome: str = "ok",
        tokens: tuple[int, int, int, int] | None = (100, 10, 50, 5), cost: float | None = 0.01) -> TraceRecord:
    usage = None if tokens is None else dict(zip(("prompt_tokens", "cached_tokens", "completion_tokens",
                                                  "reasoning_tokens"), tokens))
    return TraceRecord(trace_id=trace_id, ts=ts, tenant=tenant, outcome=outcome,
                       status=200 if outcome == "ok" else 502, attempts=attempts, usage=usage,
                       actual_cost=cost, cost_source="catalog" if cost is not None else None)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "traces.db"
    with TraceStore(path) as store:
        store.write([
            rec("rt_1", DAY1, "acme", attempt("openai", "gpt-x")),
            rec("rt_2", DAY1, "acme", attempt("mistral", "m-s", 503, "server_error"), attempt("openai", "gpt-x"),
                cost=0.02),
            rec("rt_3", DAY2, "globex", attempt("mistral", "m-s"), tokens=None, cost=None),
            rec("rt_4", DAY2, "globex", attempt("mistral", "m-s", 503, "server_error"),
                attempt("openai", "gpt-x", 503, "server_error"), outcome="upstream_failed", tokens=None, cost=None),
            rec("rt_5", DAY3, None, attempt("openai", "gpt-x"), cost=0.5),
        ])
    return path


def test_spend_by_tenant(db):
    with TraceStore(db) as store:
        rows = {r.keys: r for r in spend(store, ["tenant"])}
    assert set(rows) == {("acme",), ("globex",), ("-",)}
    acme = rows[("acme",)]
    assert (acme.calls, acme.input_tokens, acme.cached_tokens, acme.output_tokens, acme.reasoning_tokens) \
        == (2, 200, 20, 100, 10)
    assert acme.actual_cost == pytest.approx(0.03) and acme.fallbacks == 1 and acme.failures == 0
    globex = rows[("globex",)]
    assert (globex.calls, globex.unpriced, globex.fallbacks, globex.failures, globex.actual_cost) == (2, 1, 1, 1, 0)


def test_spend_by_day_model_and_range(db):
    with TraceStore(db) as store:
        rows = spend(store, ["day", "model"])
        ranged = spend(store, ["provider"], since_ts=DAY2, until_ts=DAY3)
        one_tenant = spend(store, [], tenant="acme")
    assert [r.keys for r in rows] == [("2026-03-01", "gpt-x"), ("2026-03-02", "-"), ("2026-03-02", "m-s"),
                                      ("2026-03-03", "gpt-x")]
    assert [(r.keys, r.calls) for r in ranged] == [(("-",), 1), (("mistral",), 1)]
    assert len(one_tenant) == 1 and one_tenant[0].calls == 2 and one_tenant[0].keys == ()


def test_bad_grouping(db):
    with TraceStore(db) as store, pytest.raises(ValueError, match="unknown grouping 'team'"):
        spend(store, ["team"])


def test_cli_table(db, capsys):
    assert main(["spend", "--db", str(db), "--since", "all", "--by", "tenant"]) == 0
    out = capsys.readouterr().out
    assert "acme" in out and "globex" in out and "$0.530000" in out   # the total row


def test_cli_json_and_csv(db, capsys):
    assert main(["spend", "--db", str(db), "--since", "2026-03-02", "--until", "2026-03-03",
                 "--by", "tenant,day", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["by"] == ["tenant", "day"] and doc["from"] == DAY2 - 23 * 3600 - 59 * 60
    assert doc["rows"] == [{"tenant": "globex", "day": "2026-03-02", "calls": 2, "input_tokens": 0,
                            "cached_tokens": 0, "output_tokens": 0, "reasoning_tokens": 0, "est_cost": 0.0,
                            "actual_cost": 0.0, "unpriced": 1, "fallbacks": 1, "failures": 1}]
    assert main(["spend", "--db", str(db), "--since", "all", "--by", "provider", "--csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["provider"], r["calls"], r["actual_cost"]) for r in table][0] == ("openai", "3", "0.53")


def test_cli_chart(db, tmp_path, capsys):
    out = tmp_path / "spend.png"
    assert main(["spend", "--db", str(db), "--since", "all", "--by", "tenant", "--chart", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_chart_series():
    def row(day: str, key: str, cost: float) -> SpendRow:
        return SpendRow((day, key), 1, 0, 0, 0, 0, 0.0, cost, 0, 0, 0)
    rows = [row("d1", f"t{i}", float(i)) for i in range(10)] + [row("d2", "t9", 1.0)]
    days, series = stacks(rows)
    assert days == ["d1", "d2"]
    assert list(series)[:2] == ["t9", "t8"] and len(series) == 8 and series["other"] == [0 + 1 + 2, 0]
    assert series["t9"] == [9.0, 1.0]


@pytest.mark.parametrize("argv, message", [
    (["--by", "team"], "unknown grouping 'team'"),
    (["--since", "yesterday"], "invalid time 'yesterday'"),
    (["--since", "2026-03-02", "--until", "2026-03-01"], "--until must be after --since"),
])
def test_cli_errors(db, capsys, argv, message):
    assert main(["spend", "--db", str(db), *argv]) == 2
    assert message in capsys.readouterr().err


def test_missing_matplotlib_is_a_clear_error(db, tmp_path, capsys, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_matplotlib(name, *a, **kw):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main(["spend", "--db", str(db), "--since", "all", "--chart", str(tmp_path / "x.png")]) == 2
    assert "--chart needs matplotlib: pip install 'routecar[chart]'" in capsys.readouterr().err


def test_parse_when():
    now = 1_000_000.0
    assert parse_when("1h", now) == now - 3600
    assert parse_when("2026-03-01", now) == dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp()
    assert parse_when("2026-03-01T12:00+02:00", now) == dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC).timestamp()
