"""The trace store: one SQLite row per routed request, written off the request path.

    TraceStore    the SQLite database: versioned migrations, write, prune, query, get

What one request leaves behind is a `TraceRecord` (`.record`); how it becomes
rows (scrubbing every text, and keeping no payload of a `no_log` record
anywhere) lives in `.rows`; the background writers are `.writer` (thread) and
`.process` (child process).

Tables: `decisions` (one row per request: what differs call after call, and
the key of its decision part), `decision_parts` and `policy_parts` (what repeats
call after call, written once: see `.parts`), `payloads` (only when `no_log` is
false), `catalogs` (each catalog version's entries, written once, so `routecar
explain` can replay a decision) and `migrations` (schema version). Views
`candidates` (one row per catalog entry a trace's policy judged) and `attempts`
(one per upstream call) read both layouts; `candidate_sets` and `attempt_rows`
hold what traces written before the `shared_parts` migration (or a no_log trace whose decision
quotes its payload) keep in their own rows.
"""

from __future__ import annotations

import re
import time
from operator import itemgetter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cachetools import LRUCache
from sqlite_utils import Database

from ..policy.request import usd_sql
from .parts import CANDIDATE_COLUMNS, PART_COLUMNS, PartCache
from .readback import PART_QUERY, StoredPart, attempt_rows, expand, rebuild_decision, stored_part
from .record import TraceRecord
from .rows import ATTEMPT_FIELDS, record_rows
from .scrub import dumps_json, loads_json

__all__ = ["TraceStore", "parse_since", "default_traces_path", "MIGRATIONS"]


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


# --- schema ---------------------------------------------------------------

def _v1_tables(db: Database) -> None:
    db.table("decisions").create({
        "trace_id": str, "ts": float, "tenant": str, "fingerprint": str, "digest": str,
        "policy": str, "catalog_version": str, "requested_model": str, "chosen_entry": str,
        "chosen_model": str, "chosen_provider": str, "status": int, "outcome": str,
        "latency_ms": float, "ttfb_ms": float, "prompt_tokens": int,
        "completion_tokens": int, "est_cost": float, "actual_cost": float,
        "attempts_count": int, "no_log": int, "stream": int, "mode": str,
        "decision": str, "error": str,
    }, pk="trace_id")
    db.table("candidates").create({
        "trace_id": str, "entry_id": str, "provider": str, "model": str, "passed": int,
        "failed_index": int, "failed_clause_id": str, "failed_rule": str,
        "failed_field": str, "failed_value": str, "rank": int, "est_cost": float,
    })
    db.table("attempts").create({
        "trace_id": str, "n": int, "entry_id": str, "provider": str, "model": str,
        "status": int, "error_class": str, "duration_ms": float,
    }, pk=("trace_id", "n"))
    db.table("payloads").create({"trace_id": str, "request": str, "response": str}, pk="trace_id")


def _v2_indexes(db: Database) -> None:
    db.table("decisions").create_index(["ts"])
    db.table("decisions").create_index(["tenant", "ts"])
    db.table("decisions").create_index(["fingerprint", "ts"])
    db.table("candidates").create_index(["trace_id"])


def _v3_catalogs(db: Database) -> None:
    db.execute("CREATE TABLE catalogs (version TEXT PRIMARY KEY, entries JSON, ts REAL)")


def _picks(columns: tuple[str, ...]) -> str:
    return ", ".join(f"json_extract(j.value, '$[{i}]') AS {c}" for i, c in enumerate(columns))


# Inline candidates (migrations 4 to 6): one JSON array per trace in `candidate_sets`.
CANDIDATE_SETS = (f"SELECT s.trace_id AS trace_id, CAST(j.key AS INTEGER) AS n, {_picks(CANDIDATE_COLUMNS)} "
                  f"FROM candidate_sets s, json_each(s.entries) j")


def _v4_candidate_sets(db: Database) -> None:
    """One row of candidates per trace (a JSON array) behind a `candidates` view with the
    old columns: writing 19 rows (one per catalog entry) was half of a trace's cost."""
    cols = ", ".join(CANDIDATE_COLUMNS)
    db.execute("CREATE TABLE candidate_sets (trace_id TEXT PRIMARY KEY, entries TEXT)")
    db.execute(f"INSERT INTO candidate_sets SELECT trace_id, json_group_array(json_array({cols})) "
               f"FROM (SELECT * FROM candidates ORDER BY trace_id, rowid) GROUP BY trace_id")
    db.execute("DROP TABLE candidates")
    db.execute(f"CREATE VIEW candidates AS {CANDIDATE_SETS}")


def _v5_disposition(db: Database) -> None:
    """What became of each governed request: routed, refused, failed or passthrough."""
    db.execute("ALTER TABLE decisions ADD COLUMN disposition TEXT")
    db.execute("UPDATE decisions SET disposition = CASE "
               "WHEN outcome IN ('ok', 'provider_error', 'client_gone') THEN 'routed' "
               "WHEN outcome = 'stream_broken' OR status >= 500 THEN 'failed' ELSE 'refused' END")


def _v6_usage_details(db: Database) -> None:
    """Cached input and reasoning tokens, and where `actual_cost`'s price came from (issue 13)."""
    for column, kind in (("cached_tokens", "INTEGER"), ("reasoning_tokens", "INTEGER"), ("cost_source", "TEXT")):
        db.execute(f"ALTER TABLE decisions ADD COLUMN {column} {kind}")


def _v7_api_shapes(db: Database) -> None:
    """The API shape the app spoke (`api_in`) and the one the answering attempt was sent in
    (`api_out`): chat, responses, messages. Traces from before were all chat."""
    db.execute("ALTER TABLE decisions ADD COLUMN api_in TEXT")
    db.execute("ALTER TABLE decisions ADD COLUMN api_out TEXT")
    db.execute("UPDATE decisions SET api_in = 'chat', api_out = CASE WHEN chosen_entry IS NULL "
               "THEN NULL ELSE 'chat' END")


def _v8_shared_parts(db: Database) -> None:
    """What repeats call after call (verdicts, ranking, policy) stored once in `decision_parts`
    and `policy_parts`; a trace row keeps the key of its part and what differs per call, its
    attempts included (`attempt_list`). Older rows stay as they are; the `candidates` and
    `attempts` views read both layouts."""
    db.execute("CREATE TABLE policy_parts (key TEXT PRIMARY KEY, fingerprint TEXT, digest TEXT, "
               "policy TEXT, summary TEXT)")
    db.execute("CREATE TABLE decision_parts (key TEXT PRIMARY KEY, policy_key TEXT, catalog_version TEXT, "
               "candidates TEXT, keys TEXT)")
    for column in ("part", "request", "attempt_list", "costs"):
        db.execute(f"ALTER TABLE decisions ADD COLUMN {column} TEXT")
    db.execute("ALTER TABLE attempts RENAME TO attempt_rows")
    cols = ", ".join(ATTEMPT_FIELDS)
    db.execute(f"CREATE VIEW attempts AS SELECT trace_id, n, {cols} FROM attempt_rows UNION ALL "
               f"SELECT d.trace_id AS trace_id, CAST(j.key AS INTEGER) + 1 AS n, {_picks(ATTEMPT_FIELDS)} "
               f"FROM decisions d, json_each(d.attempt_list) j")
    rank = "json_extract(j.value, '$[9]')"
    cost = usd_sql("json_extract(d.request, '$[0]')", "json_extract(d.request, '$[2]')",
                   "json_extract(j.value, '$[10]')", "json_extract(j.value, '$[11]')")
    db.execute("DROP VIEW candidates")
    db.execute(f"CREATE VIEW candidates AS {CANDIDATE_SETS} UNION ALL "
               f"SELECT d.trace_id AS trace_id, CAST(j.key AS INTEGER) AS n, {_picks(PART_COLUMNS[:10])}, "
               f"CASE WHEN {rank} IS NULL THEN NULL ELSE "
               f"COALESCE(json_extract(d.costs, '$[' || ({rank} - 1) || ']'), {cost}) END AS est_cost "
               f"FROM decisions d JOIN decision_parts p ON p.key = d.part, json_each(p.candidates) j")


# Append only: a migration's position is its version number.
MIGRATIONS: list[tuple[str, Callable[[Database], None]]] = [
    ("tables", _v1_tables),
    ("indexes", _v2_indexes),
    ("catalogs", _v3_catalogs),
    ("candidate_sets", _v4_candidate_sets),
    ("disposition", _v5_disposition),
    ("usage_details", _v6_usage_details),
    ("api_shapes", _v7_api_shapes),
    ("shared_parts", _v8_shared_parts),
]

_CHILDREN = ("candidate_sets", "attempt_rows", "payloads")
PARTS_PRUNE_EVERY_S = 3600.0  # orphaned parts: a scan of decisions.part, so not every minute


class TraceStore:
    """The trace database at `path` (created if missing, WAL mode, migrated on open).

    One instance per thread: the connection is not shared across threads.
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time,
                 busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self.clock = clock
        # The parts of recent decisions (writing), and parts as read back (`get`, `query`).
        self._parts = PartCache()
        self._read: LRUCache[str, StoredPart | None] = LRUCache(maxsize=256)
        self._parts_pruned_at: float | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = Database(self.path, execute_plugins=False)
        try:
            self.db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            self.db.enable_wal()
            # WAL + NORMAL: a commit no longer waits for fsync (only checkpoints do); the
            # database stays consistent, a power cut may lose the last few traces.
            self.db.execute("PRAGMA synchronous = NORMAL")
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
        return self.commit([record_rows(rec, self._parts) for rec in records])

    def commit(self, batch: Sequence[Mapping[str, list[Any]]]) -> int:
        """Write the rows of several records (`rows.record_rows`) in one transaction."""
        tables: dict[str, list[dict[str, Any]]] = {"decisions": [], "payloads": [], "candidate_sets": []}
        parts: dict[str, dict[str, tuple[Any, ...]]] = {"policy_parts": {}, "decision_parts": {}}
        catalogs: dict[str, tuple[Any, ...]] = {}
        for rows in batch:
            for table, got in tables.items():
                got.extend(rows[table])
            for table, known in parts.items():
                for part in rows[table]:
                    known[part.key] = part.row()
            for snapshot in rows["catalogs"]:
                catalogs.setdefault(snapshot[0], snapshot)
        ids = [r["trace_id"] for r in tables["decisions"]]
        conn = self.db.conn
        with self.db.atomic():
            # A repeated trace_id replaces the old trace: its child rows go first (one query to
            # find such ids; trace ids are fresh in practice).
            again = [row for chunk in range(0, len(ids), 500) for row in conn.execute(
                f"SELECT trace_id FROM decisions WHERE trace_id IN ({', '.join('?' * len(ids[chunk:chunk + 500]))})",
                ids[chunk:chunk + 500])]
            for table in _CHILDREN:
                conn.executemany(f"DELETE FROM {table} WHERE trace_id = ?", again)
            # Every batch (re)states the parts it uses: a part pruned meanwhile, or never written
            # to this file, is there again before a row references it.
            for table, known in parts.items():
                if known:
                    width = len(next(iter(known.values())))
                    conn.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({', '.join('?' * width)})",
                                     list(known.values()))
            for table, rows in tables.items():
                if rows:  # plain executemany: sqlite-utils' insert_all costs ~3x the CPU here
                    cols = list(rows[0])
                    sql = (f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) "
                           f"VALUES ({', '.join('?' * len(cols))})")
                    conn.executemany(sql, list(map(itemgetter(*cols), rows)))
            conn.executemany("INSERT OR IGNORE INTO catalogs VALUES (?, ?, ?)", list(catalogs.values()))
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
            at = self.clock()
            if deleted and (self._parts_pruned_at is None or at - self._parts_pruned_at >= PARTS_PRUNE_EVERY_S):
                self._parts_pruned_at = at
                self.db.execute("DELETE FROM decision_parts WHERE key NOT IN "
                                "(SELECT part FROM decisions WHERE part IS NOT NULL)")
                self.db.execute("DELETE FROM policy_parts WHERE key NOT IN (SELECT policy_key FROM decision_parts)")
                self._read.clear()
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
        rows = list(self.db.query(sql, [*params, int(last)]))
        for row in rows:
            expand(row, self._part(row.get("part")))
        return rows

    def _part(self, key: str | None) -> StoredPart | None:
        if key is None:
            return None
        if key not in self._read:
            found = self.db.execute(PART_QUERY, [key]).fetchone()
            self._read[key] = None if found is None else stored_part(found)
        return self._read[key]

    def get(self, trace_id: str) -> dict[str, Any] | None:
        """One trace: its decision row plus `candidates`, `attempts`, `payload` (or None),
        `decision` rebuilt as `Decision.to_dict()` (or None) and `error` parsed."""
        rows = list(self.db.query("SELECT * FROM decisions WHERE trace_id = ?", [trace_id]))
        if not rows:
            return None
        trace = rows[0]
        attempts = trace.get("attempt_list")
        candidates = expand(trace, self._part(trace.get("part")))
        trace["candidates"] = candidates if candidates is not None else list(self.db.query(
            f"SELECT * FROM ({CANDIDATE_SETS}) WHERE trace_id = ? ORDER BY n", [trace_id]))
        trace["attempts"] = attempt_rows(trace_id, attempts) if attempts is not None else list(self.db.query(
            "SELECT * FROM attempt_rows WHERE trace_id = ? ORDER BY n", [trace_id]))
        payload = list(self.db.query(
            "SELECT request, response FROM payloads WHERE trace_id = ?", [trace_id]))
        trace["payload"] = payload[0] if payload else None
        trace["error"] = loads_json(trace["error"])
        trace["decision"] = rebuild_decision(trace)
        return trace

    def get_catalog(self, version: str) -> list[dict[str, Any]] | None:
        """The entries of catalog `version` as stored by the first trace that used it."""
        row = self.db.execute("SELECT entries FROM catalogs WHERE version = ?",
                              [version]).fetchone()
        return None if row is None else loads_json(row[0])

