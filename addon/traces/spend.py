"""Spend over a time range, from the trace store: what `routecar spend` prints and draws.

    spend(store, by=("tenant",), since_ts=, until_ts=, tenant=) -> list[SpendRow]

Grouping keys (`by`, any combination, in order): `tenant`, `model` (the model
that answered), `provider`, `entry`, `day` (UTC date). Per group:

    calls             governed calls (routed, refused or failed)
    input_tokens, cached_tokens, output_tokens, reasoning_tokens   as the providers reported them
    est_cost          the decision's estimate for the entry that answered, answered calls only
    actual_cost       from the reported usage (genai-prices, else the catalog price)
    unpriced          answered calls without an actual cost (no usage reported, e.g. a stream
                      without `stream_options.include_usage`)
    fallbacks         calls that needed more than one attempt
    failures          calls whose outcome is not `ok`

One SQL aggregate over the `decisions` table (indexed on `ts`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .store import TraceStore

GROUPS = {
    "tenant": "COALESCE(tenant, '-')",
    "model": "COALESCE(chosen_model, '-')",
    "provider": "COALESCE(chosen_provider, '-')",
    "entry": "COALESCE(chosen_entry, '-')",
    "day": "date(ts, 'unixepoch')",
}
MEASURES = ("calls", "input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "est_cost",
            "actual_cost", "unpriced", "fallbacks", "failures")
_AGGREGATES = """
    COUNT(*),
    COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(cached_tokens), 0),
    COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(reasoning_tokens), 0),
    COALESCE(SUM(CASE WHEN outcome = 'ok' THEN est_cost END), 0), COALESCE(SUM(actual_cost), 0),
    SUM(outcome = 'ok' AND actual_cost IS NULL), SUM(attempts_count > 1), SUM(outcome != 'ok')
"""


@dataclass(frozen=True)
class SpendRow:
    keys: tuple[str, ...]    # one value per `by` key
    calls: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int
    est_cost: float
    actual_cost: float
    unpriced: int
    fallbacks: int
    failures: int

    def to_dict(self, by: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = dict(zip(by, self.keys))
        out.update({k: v for k, v in asdict(self).items() if k != "keys"})
        return out


def check_groups(by: Sequence[str]) -> list[str]:
    """`by` validated: known keys, each once. Raises ValueError naming the bad one."""
    seen: list[str] = []
    for key in by:
        if key not in GROUPS:
            raise ValueError(f"unknown grouping {key!r}: use {', '.join(GROUPS)}")
        if key in seen:
            raise ValueError(f"grouping {key!r} given twice")
        seen.append(key)
    return seen


def spend(store: TraceStore, by: Sequence[str] = ("tenant",), *, since_ts: float | None = None,
          until_ts: float | None = None, tenant: str | None = None) -> list[SpendRow]:
    """Spend per group over [since_ts, until_ts), biggest actual cost first (by day: oldest first)."""
    keys = check_groups(by)
    where, params = [], []
    for clause, value in (("ts >= ?", since_ts), ("ts < ?", until_ts), ("tenant = ?", tenant)):
        if value is not None:
            where.append(clause)
            params.append(value)
    cols = [GROUPS[k] for k in keys]
    sql = f"SELECT {', '.join([*cols, _AGGREGATES])} FROM decisions"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if cols:
        sql += " GROUP BY " + ", ".join(str(i) for i in range(1, len(cols) + 1))
        order = [f"{i} ASC" for i, k in enumerate(keys, 1) if k == "day"]
        ties = [str(i) for i in range(1, len(cols) + 1)]
        sql += " ORDER BY " + ", ".join([*order, f"{len(cols) + 7} DESC", f"{len(cols) + 1} DESC", *ties])
    try:
        rows = store.db.execute(sql, params).fetchall()
    except sqlite3.OperationalError as e:   # a database from before schema v5
        raise ValueError(f"{store.path}: cannot read spend ({e}); open it once with routecar >= schema v5") from e
    out = []
    n = len(cols)
    for r in rows:
        if not cols and r[0] == 0:
            return []   # no group and no call: no row (SQL gives one row of zeros)
        m = list(r[n:])
        out.append(SpendRow(tuple(str(v) for v in r[:n]), calls=int(m[0]), input_tokens=int(m[1]),
                            cached_tokens=int(m[2]), output_tokens=int(m[3]), reasoning_tokens=int(m[4]),
                            est_cost=float(m[5]), actual_cost=float(m[6]), unpriced=int(m[7] or 0),
                            fallbacks=int(m[8] or 0), failures=int(m[9] or 0)))
    return out
