"""The trace writer as it was before the `shared_parts` migration (decisions inline in each trace's rows), kept
verbatim as the reference the parts layout is checked against: the same records written by both
must read back the same (`routecar explain`, `routecar traces --json`, the SQL views). Test support
only; never imported by routecar."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

from routecar.policy import Decision, Failure, static_failures
from routecar.traces.record import TraceRecord
from routecar.traces.scrub import dumps as _dumps
from routecar.traces.scrub import dumps_json, scrub
from routecar.traces.scrub import maybe_secret as _maybe_secret
from routecar.traces.scrub import payload_strings as _payload_strings
from routecar.traces.scrub import without as _without
from routecar.traces.store import MIGRATIONS

# The schema version this writer wrote: every migration before `shared_parts`.
INLINE_MIGRATIONS = next(i for i, (name, _) in enumerate(MIGRATIONS) if name == "shared_parts")


def _text(body: bytes | str | None) -> str | None:
    if body is None:
        return None
    return body.decode("utf-8", "replace") if isinstance(body, bytes) else body

_StaticParts = tuple[str | None, str | None, dict[int, tuple[Any, ...]]]


class DecisionParts:
    """What a Decision contributes to the rows, with the parts that only depend on
    (policy, catalog) dumped and scrubbed once: the canonical policy, its clauses, and
    the request-independent failures (most of the candidates table)."""

    def __init__(self, memo: MutableMapping[tuple[str, str], _StaticParts]) -> None:
        self.memo = memo

    def _static(self, d: Decision) -> _StaticParts:
        key = (d.policy.identity, d.catalog.version)
        hit = self.memo.get(key)
        if hit is None:
            summary = {k: v for k, v in d.policy.summary().items() if k != "canonical"}
            fails = {i: self._failure(f) for i, f in static_failures(d.policy, d.catalog).items()}
            hit = self.memo[key] = (dumps_json(d.policy.canonical), dumps_json(summary), fails)
        return hit

    @staticmethod
    def _failure(f: Failure) -> tuple[Any, ...]:
        return (f.index, scrub(f.id), dumps_json(f.rule), f.field, dumps_json(f.value))

    def rows(self, d: Decision) -> tuple[str | None, str, list[list[Any]], dict[str, Any]]:
        """(policy column, decision column, candidate entries (CANDIDATE_COLUMNS), {entry id: ranked dict})."""
        policy_json, summary_json, fails = self._static(d)
        ranked = [r.to_dict() for r in d.ranked]
        by_id = {r["id"]: r for r in ranked}
        rank = {r["id"]: n for n, r in enumerate(ranked, 1)}
        static = static_failures(d.policy, d.catalog)
        entries = []
        for i, (entry, f) in enumerate(d.verdicts):
            cached = fails.get(i) if f is not None and f is static.get(i) else None
            parts = cached or (self._failure(f) if f is not None else (None,) * 5)
            r = by_id.get(entry.id)
            entries.append([entry.id, entry.provider, entry.model, int(f is None), *parts,
                            rank.get(entry.id), r["est_cost"] if r else None])
        # The decision column is `Decision.to_dict()` without what other columns hold (the
        # candidates, the canonical policy), assembled from pre-dumped parts.
        rest = ('{"catalog_version":%s,"fallback":%s,"policy":%s,"ranked":%s,"request":%s,"selected":%s}' % (
            _dumps(d.catalog.version), _dumps([r.entry.id for r in d.fallback]), summary_json,
            dumps_json(ranked), dumps_json(d.request.to_dict()), _dumps(ranked[0]["id"] if ranked else None)))
        if _maybe_secret(rest):
            rest = dumps_json(json.loads(rest)) or rest
        return policy_json, rest, entries, by_id


_JSON_COLUMNS = ("policy", "decision", "error")  # scrubbed structurally, by dumps_json


def record_rows(rec: TraceRecord, parts: DecisionParts | None = None) -> dict[str, list[dict[str, Any]]]:
    """Split one record into the rows of each table, enforcing no_log and scrubbing.

    `parts` carries what traces of one (policy, catalog) share across calls; the
    Decision is materialised here, in a writer, not on the proxy's event loop."""
    request, response = _text(rec.request_body), _text(rec.response_body)
    error, d = rec.error, rec.decision
    # A no_log record keeps no payload, nor any string of it echoed elsewhere (an error
    # message quoting the prompt, a clause id copied from it).
    hidden = _payload_strings(request) | _payload_strings(response) if rec.no_log else set()
    if rec.no_log:
        request = response = None
    entries: list[list[Any]] = []
    by_id: dict[str, Any] = {}
    policy_json = decision_json = None
    chosen_default = None
    fingerprint, digest, catalog_version, requested = rec.fingerprint, rec.digest, None, rec.requested_model
    if d is not None:
        policy_json, decision_json, entries, by_id = (parts or DecisionParts({})).rows(d)
        chosen_default = d.catalog.entries[d.order[0]].id if d.order else None
        fingerprint, digest = d.policy.fingerprint, d.policy.digest
        catalog_version, requested = d.catalog.version, d.request.model
    if hidden:
        error = _without(error, hidden)
        entries = _without(entries, hidden)
        policy_json, decision_json = (None if text is None else dumps_json(_without(json.loads(text), hidden))
                                      for text in (policy_json, decision_json))
    won = [a for a in rec.attempts if isinstance(a.get("status"), int) and a["status"] < 400]
    chosen_id = won[-1].get("entry") if won else chosen_default
    chosen = by_id.get(chosen_id or "") or (won[-1] if won else {})
    usage = rec.usage or {}
    row: dict[str, Any] = {
        "trace_id": rec.trace_id, "ts": rec.ts, "tenant": rec.tenant,
        "fingerprint": fingerprint, "digest": digest, "policy": policy_json,
        "catalog_version": catalog_version, "requested_model": requested,
        "chosen_entry": chosen_id, "chosen_model": chosen.get("model"), "chosen_provider": chosen.get("provider"),
        "status": rec.status, "outcome": rec.outcome, "disposition": rec.disposition,
        "api_in": rec.api_in, "api_out": rec.api_out,
        "latency_ms": rec.latency_ms, "ttfb_ms": rec.ttfb_ms,
        "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
        "cached_tokens": usage.get("cached_tokens"), "reasoning_tokens": usage.get("reasoning_tokens"),
        "est_cost": by_id.get(chosen_id or "", {}).get("est_cost"), "actual_cost": rec.actual_cost,
        "cost_source": rec.cost_source,
        "attempts_count": len(rec.attempts), "no_log": int(rec.no_log), "stream": int(rec.stream),
        "mode": rec.mode, "decision": decision_json, "error": dumps_json(error),
    }
    attempts = [{"trace_id": rec.trace_id, "n": n, "entry_id": a.get("entry"), "provider": a.get("provider"),
                 "model": a.get("model"), "status": a.get("status"), "error_class": a.get("error_class"),
                 "duration_ms": a.get("duration_ms")} for n, a in enumerate(rec.attempts, 1)]
    payloads = ([{"trace_id": rec.trace_id, "request": request, "response": response}]
                if request is not None or response is not None else [])
    # Candidate rows hold catalog values and pre-scrubbed policy parts; the rest is
    # per request and may carry anything the app sent.
    for r in (row, *attempts, *payloads):
        texts = [v for k, v in r.items() if isinstance(v, str) and k not in _JSON_COLUMNS]
        if texts and _maybe_secret("\n".join(texts)):  # one search per row, not per column
            for k, v in r.items():
                if isinstance(v, str) and k not in _JSON_COLUMNS:
                    r[k] = scrub(v)
    return {"decisions": [row], "candidate_sets": _candidate_sets(rec.trace_id, entries),
            "attempts": attempts, "payloads": payloads}


def _candidate_sets(trace_id: str, entries: list[list[Any]]) -> list[dict[str, Any]]:
    """The `candidates` of one trace as one row: a JSON array of CANDIDATE_COLUMNS arrays
    (the `candidates` view unpacks it). One row instead of one per catalog entry halves
    what a trace costs to write."""
    if not entries:
        return []
    return [{"trace_id": trace_id, "entries": dumps_json(entries)}]


def write_inline(path: Any, records: list[TraceRecord]) -> None:
    """A trace database at schema version INLINE_MIGRATIONS holding `records`, as routecar before
    the `shared_parts` migration wrote it (its migrations, its rows)."""
    import sqlite3

    from sqlite_utils import Database

    db = Database(path)
    db.execute("CREATE TABLE migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at REAL)")
    for version, (name, migrate) in enumerate(MIGRATIONS[:INLINE_MIGRATIONS], start=1):
        migrate(db)
        db.execute("INSERT INTO migrations VALUES (?, ?, ?)", (version, name, 0.0))
    parts = DecisionParts({})
    conn: sqlite3.Connection = db.conn
    for rec in records:
        for table, rows in record_rows(rec, parts).items():
            for r in rows:
                conn.execute(f"INSERT OR REPLACE INTO {table} ({', '.join(r)}) VALUES ({', '.join('?' * len(r))})",
                             tuple(r.values()))
        if rec.catalog is not None and rec.decision is not None:
            conn.execute("INSERT OR IGNORE INTO catalogs VALUES (?, ?, ?)",
                         (rec.decision.catalog.version, dumps_json(list(rec.catalog)), rec.ts))
    conn.commit()
    db.close()
