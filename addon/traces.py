"""The trace store: one SQLite row per routed request, written off the request path.

    TraceRecord   what the addon fills in for one request (frozen)
    TraceStore    the SQLite database: versioned migrations, write, prune, query, get
    TraceWriter   background thread feeding a TraceStore (in `routecar.tracewriter`,
                  re-exported here)

Two invariants are enforced here rather than trusted from callers: a `no_log`
record never has its request or response payload written anywhere (not in
`payloads`, and not echoed in the `error` or `decision` columns), and every
text that reaches the database goes through `scrub()`, so credentials copied
into an error message or a payload never land on disk.

Tables: `decisions` (one row per request), `candidates` (one per catalog entry
the policy judged), `attempts` (one per upstream call), `payloads` (only when
`no_log` is false) and `migrations` (schema version).
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlite_utils import Database

if TYPE_CHECKING:
    from routecar.tracewriter import TraceWriter

__all__ = ["TraceRecord", "TraceStore", "TraceWriter", "scrub", "scrub_obj",
           "parse_since", "default_traces_path", "MIGRATIONS"]

REDACTED = "[redacted]"
NO_LOG_REDACTED = "[no_log]"

_SECRET_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key|api[-_]key)\b"  # the header/field name
    r"([\\\"'\s]*[:=][\\\"'\s]*)"                                  # ": ", '=', '\": \"'
    r"(?!\[redacted\]|null\b)((?:(?:bearer|basic|token)\s+)?[^\\\"'\s,;&}\]]+)")
_BEARER = re.compile(r"(?i)\b(bearer)\s+(?!\[redacted\])[A-Za-z0-9._~+/=-]+")
_KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}")
_SECRET_KEYS = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key",
                          "api_key", "apikey"})


def scrub(text: str) -> str:
    """Replace anything that looks like a credential in `text` with `[redacted]`."""
    text = _SECRET_HEADER.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + " " + REDACTED, text)
    return _KEY.sub(REDACTED, text)


def scrub_obj(value: Any) -> Any:
    """`scrub()` every string in a JSON-like value; secret-named keys lose their value."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {scrub(str(k)): REDACTED if str(k).lower() in _SECRET_KEYS and v is not None
                else scrub_obj(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_obj(v) for v in value]
    return value


@dataclass(frozen=True)
class TraceRecord:
    """One request as the addon saw it. `decision` is `Decision.to_dict()` or None."""

    trace_id: str
    ts: float
    tenant: str | None = None
    mode: str | None = None
    no_log: bool = False
    stream: bool = False
    status: int | None = None
    outcome: str = "ok"
    latency_ms: float | None = None
    ttfb_ms: float | None = None
    usage: Mapping[str, Any] | None = None
    actual_cost: float | None = None
    decision: Mapping[str, Any] | None = None
    attempts: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    request_body: bytes | str | None = None
    response_body: bytes | str | None = None
    error: Mapping[str, Any] | None = None
    fingerprint: str | None = None
    digest: str | None = None
    requested_model: str | None = None


def parse_since(text: str) -> float:
    """`"90s" | "30m" | "1h" | "2d" | "1w"` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not m:
        raise ValueError(f"invalid duration {text!r}: expected a number followed by "
                         "s, m, h, d or w (e.g. 90s, 30m, 1h, 2d)")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


def default_traces_path(env: Mapping[str, str]) -> Path:
    """`$ROUTECAR_HOME/traces.db`, else `~/.routecar/traces.db` (`env` is e.g. os.environ)."""
    if env.get("ROUTECAR_HOME"):
        return Path(env["ROUTECAR_HOME"]).expanduser() / "traces.db"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".routecar" / "traces.db"


# --- rows -----------------------------------------------------------------

def _dumps(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(scrub_obj(value), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, default=str)


def _text(body: bytes | str | None) -> str | None:
    if body is None:
        return None
    return body.decode("utf-8", "replace") if isinstance(body, bytes) else body


_NOT_PAYLOAD_KEYS = frozenset({"model", "role", "type", "object", "id", "finish_reason",
                               "system_fingerprint", "stream", "tool_choice", "service_tier"})


def _payload_strings(body: str | None) -> set[str]:
    """The substrings of a body that must not survive a no_log record: the body itself
    and every string leaf of its JSON (message contents, tool arguments...)."""
    if not body:
        return set()
    found = {body.strip()}

    def walk(value: Any, key: str | None) -> None:
        if isinstance(value, str) and len(value) >= 8 and key not in _NOT_PAYLOAD_KEYS:
            found.add(value)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
    try:
        walk(json.loads(body), None)
    except ValueError:
        pass
    return {s for s in found if s}


def _without(value: Any, secrets: set[str]) -> Any:
    """Replace every string containing one of `secrets` with `[no_log]`."""
    if isinstance(value, str):
        return NO_LOG_REDACTED if any(s in value for s in secrets) else value
    if isinstance(value, Mapping):
        return {k: _without(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without(v, secrets) for v in value]
    return value


def _rows(rec: TraceRecord) -> dict[str, list[dict[str, Any]]]:
    """Split one record into the rows of each table, enforcing no_log and scrubbing."""
    request, response = _text(rec.request_body), _text(rec.response_body)
    decision, error = rec.decision, rec.error
    if rec.no_log:
        hidden = _payload_strings(request) | _payload_strings(response)
        decision, error = _without(decision, hidden), _without(error, hidden)
        request = response = None
    d: Mapping[str, Any] = decision or {}
    policy, req = d.get("policy") or {}, d.get("request") or {}
    ranked = list(d.get("ranked") or [])
    by_id = {c.get("id"): c for c in [*(d.get("candidates") or []), *ranked]}
    won = [a for a in rec.attempts if isinstance(a.get("status"), int) and a["status"] < 400]
    chosen_id = won[-1].get("entry") if won else d.get("selected")
    chosen = by_id.get(chosen_id) or (won[-1] if won else {})
    usage = rec.usage or {}
    rest = {k: v for k, v in d.items() if k != "candidates"}
    if "policy" in rest:
        rest["policy"] = {k: v for k, v in policy.items() if k != "canonical"}
    row: dict[str, Any] = {
        "trace_id": rec.trace_id, "ts": rec.ts, "tenant": rec.tenant,
        "fingerprint": policy.get("fingerprint", rec.fingerprint),
        "digest": policy.get("digest", rec.digest),
        "policy": _dumps(policy.get("canonical")),
        "catalog_version": d.get("catalog_version"),
        "requested_model": req.get("model", rec.requested_model),
        "chosen_entry": chosen_id, "chosen_model": chosen.get("model"),
        "chosen_provider": chosen.get("provider"),
        "status": rec.status, "outcome": rec.outcome,
        "latency_ms": rec.latency_ms, "ttfb_ms": rec.ttfb_ms,
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "est_cost": by_id.get(chosen_id, {}).get("est_cost"), "actual_cost": rec.actual_cost,
        "attempts_count": len(rec.attempts), "no_log": int(rec.no_log),
        "stream": int(rec.stream), "mode": rec.mode,
        "decision": _dumps(rest) if decision is not None else None,
        "error": _dumps(error),
    }
    rank = {r.get("id"): i for i, r in enumerate(ranked, start=1)}
    candidates = []
    for c in d.get("candidates") or []:
        failed = c.get("failed") or {}
        candidates.append({
            "trace_id": rec.trace_id, "entry_id": c.get("id"), "provider": c.get("provider"),
            "model": c.get("model"), "passed": int(bool(c.get("passed"))),
            "failed_index": failed.get("index"), "failed_clause_id": failed.get("id"),
            "failed_rule": _dumps(failed.get("rule")), "failed_field": failed.get("field"),
            "failed_value": _dumps(failed.get("value")) if "value" in failed else None,
            "rank": rank.get(c.get("id")), "est_cost": by_id.get(c.get("id"), {}).get("est_cost"),
        })
    attempts = [{"trace_id": rec.trace_id, "n": n, "entry_id": a.get("entry"),
                 "provider": a.get("provider"), "model": a.get("model"),
                 "status": a.get("status"), "error_class": a.get("error_class"),
                 "duration_ms": a.get("duration_ms")} for n, a in enumerate(rec.attempts, 1)]
    payloads = ([{"trace_id": rec.trace_id, "request": request, "response": response}]
                if request is not None or response is not None else [])
    scrubbed = {"decisions": [row], "candidates": candidates, "attempts": attempts,
                "payloads": payloads}
    json_cols = {"policy", "decision", "error", "failed_rule", "failed_value"}
    for rows in scrubbed.values():
        for r in rows:  # JSON columns were scrubbed structurally by _dumps
            for k, v in r.items():
                if isinstance(v, str) and k not in json_cols:
                    r[k] = scrub(v)
    return scrubbed


# --- schema ---------------------------------------------------------------

def _v1_tables(db: Database) -> None:
    db["decisions"].create({
        "trace_id": str, "ts": float, "tenant": str, "fingerprint": str, "digest": str,
        "policy": str, "catalog_version": str, "requested_model": str, "chosen_entry": str,
        "chosen_model": str, "chosen_provider": str, "status": int, "outcome": str,
        "latency_ms": float, "ttfb_ms": float, "prompt_tokens": int,
        "completion_tokens": int, "est_cost": float, "actual_cost": float,
        "attempts_count": int, "no_log": int, "stream": int, "mode": str,
        "decision": str, "error": str,
    }, pk="trace_id")
    db["candidates"].create({
        "trace_id": str, "entry_id": str, "provider": str, "model": str, "passed": int,
        "failed_index": int, "failed_clause_id": str, "failed_rule": str,
        "failed_field": str, "failed_value": str, "rank": int, "est_cost": float,
    })
    db["attempts"].create({
        "trace_id": str, "n": int, "entry_id": str, "provider": str, "model": str,
        "status": int, "error_class": str, "duration_ms": float,
    }, pk=("trace_id", "n"))
    db["payloads"].create({"trace_id": str, "request": str, "response": str}, pk="trace_id")


def _v2_indexes(db: Database) -> None:
    db["decisions"].create_index(["ts"])
    db["decisions"].create_index(["tenant", "ts"])
    db["decisions"].create_index(["fingerprint", "ts"])
    db["candidates"].create_index(["trace_id"])


# Append only: a migration's position is its version number.
MIGRATIONS: list[tuple[str, Callable[[Database], None]]] = [
    ("tables", _v1_tables),
    ("indexes", _v2_indexes),
]

_CHILDREN = ("candidates", "attempts", "payloads")


class TraceStore:
    """The trace database at `path` (created if missing, WAL mode, migrated on open).

    One instance per thread: the connection is not shared across threads.
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time,
                 busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = Database(self.path, execute_plugins=False)
        try:
            self.db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            self.db.enable_wal()
            self._migrate()
        except BaseException:
            self.db.close()
            raise

    def _migrate(self) -> None:
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")  # serialises concurrent openers of a new file
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS migrations "
                         "(version INTEGER PRIMARY KEY, name TEXT, applied_at REAL)")
            done = {r[0] for r in conn.execute("SELECT version FROM migrations")}
            for version, (name, migrate) in enumerate(MIGRATIONS, start=1):
                if version not in done:
                    migrate(self.db)
                    conn.execute("INSERT INTO migrations VALUES (?, ?, ?)",
                                 (version, name, self.clock()))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @property
    def schema_version(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(version), 0) FROM migrations").fetchone()[0]

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, records: Sequence[TraceRecord]) -> int:
        """Write `records` in one transaction; a repeated trace_id replaces the old trace."""
        tables: dict[str, list[dict[str, Any]]] = {"decisions": [], **{t: [] for t in _CHILDREN}}
        for rec in records:
            for table, rows in _rows(rec).items():
                tables[table].extend(rows)
        ids = [(r["trace_id"],) for r in tables["decisions"]]
        with self.db.atomic():
            for table in _CHILDREN:
                self.db.conn.executemany(f"DELETE FROM {table} WHERE trace_id = ?", ids)
            for table, rows in tables.items():
                if rows:
                    self.db[table].insert_all(rows, replace=True, batch_size=500)
        return len(ids)

    def prune(self, max_age_s: float | None = None, max_rows: int | None = None,
              now: float | None = None) -> int:
        """Delete traces older than `max_age_s` and beyond the newest `max_rows`."""
        doomed: list[tuple[str, list[Any]]] = []
        if max_age_s is not None:
            cutoff = (self.clock() if now is None else now) - max_age_s
            doomed.append(("SELECT trace_id FROM decisions WHERE ts < ?", [cutoff]))
        if max_rows is not None:
            doomed.append(("SELECT trace_id FROM decisions ORDER BY ts DESC, trace_id DESC "
                           "LIMIT -1 OFFSET ?", [max(0, int(max_rows))]))
        deleted = 0
        with self.db.atomic():
            for select, params in doomed:
                for table in _CHILDREN:
                    self.db.execute(f"DELETE FROM {table} WHERE trace_id IN ({select})", params)
                deleted += self.db.execute(
                    f"DELETE FROM decisions WHERE trace_id IN ({select})", params).rowcount
        return deleted

    def query(self, tenant: str | None = None, fingerprint: str | None = None,
              since_ts: float | None = None, last: int = 50) -> list[dict[str, Any]]:
        """Decision rows, newest first (JSON columns left as text)."""
        where, params = [], []
        for clause, value in (("tenant = ?", tenant), ("fingerprint = ?", fingerprint),
                              ("ts >= ?", since_ts)):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = "SELECT * FROM decisions" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY ts DESC, trace_id DESC LIMIT ?"
        return list(self.db.query(sql, [*params, int(last)]))

    def get(self, trace_id: str) -> dict[str, Any] | None:
        """One trace: its decision row plus `candidates`, `attempts`, `payload` (or None),
        `decision` rebuilt as `Decision.to_dict()` (or None) and `error` parsed."""
        rows = list(self.db.query("SELECT * FROM decisions WHERE trace_id = ?", [trace_id]))
        if not rows:
            return None
        trace = rows[0]
        trace["candidates"] = list(self.db.query(
            "SELECT * FROM candidates WHERE trace_id = ? ORDER BY rowid", [trace_id]))
        trace["attempts"] = list(self.db.query(
            "SELECT * FROM attempts WHERE trace_id = ? ORDER BY n", [trace_id]))
        payload = list(self.db.query(
            "SELECT request, response FROM payloads WHERE trace_id = ?", [trace_id]))
        trace["payload"] = payload[0] if payload else None
        trace["error"] = _loads(trace["error"])
        trace["decision"] = _decision(trace)
        return trace


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _decision(trace: Mapping[str, Any]) -> dict[str, Any] | None:
    """Reassemble `Decision.to_dict()` from the decision, policy and candidate columns."""
    decision = _loads(trace["decision"])
    if decision is None:
        return None
    if "policy" in decision:
        decision["policy"]["canonical"] = _loads(trace["policy"])
    decision["candidates"] = [{
        "id": c["entry_id"], "provider": c["provider"], "model": c["model"],
        "passed": bool(c["passed"]),
        "failed": None if c["passed"] else {
            "index": c["failed_index"], "id": c["failed_clause_id"],
            "rule": _loads(c["failed_rule"]), "field": c["failed_field"],
            "value": _loads(c["failed_value"])},
    } for c in trace["candidates"]]
    return decision


def __getattr__(name: str) -> Any:
    # TraceWriter lives in its own module (it imports this one); re-export it lazily.
    if name == "TraceWriter":
        from routecar.tracewriter import TraceWriter
        return TraceWriter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
