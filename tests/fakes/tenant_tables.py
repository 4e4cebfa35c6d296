"""Write one set of tenants (dicts as in tenants.yaml) into PostgreSQL and SQLite tables of
the shape docs/tenants.md documents, for tests and benchmarks.

    write_pg_tenants(dsn, "tenants", tenants)        # typed columns + the recommended indexes
    write_sqlite_tenants(path, "tenants", tenants)   # text cells; one key hash per row
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

KEY = "api_key_sha256"
# jsonb for one list column, text[] for the others: both kinds must read the same.
JSONB_COLUMNS = frozenset({"blocked_providers"})


def _pg_type(name: str, values: list[Any]) -> str:
    if name in JSONB_COLUMNS:
        return "jsonb"
    if all(isinstance(v, bool) for v in values):
        return "boolean"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "numeric"
    if all(isinstance(v, list) for v in values):
        return "text[]"
    return "text"


def columns_of(tenants: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {}
    for t in tenants:
        for k, v in t.items():
            if k not in ("id", KEY):
                cols.setdefault(k, []).append(v)
    return cols


def write_pg_tenants(dsn: str, table: str, tenants: list[Mapping[str, Any]], *, indexes: bool = True) -> None:
    cols = columns_of(tenants)
    types = {k: _pg_type(k, v) for k, v in cols.items()}
    names = ["id", KEY, *cols]
    t = sql.Identifier(table)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(t))
        defs = [sql.SQL("id text PRIMARY KEY"), sql.SQL("{} text[]").format(sql.Identifier(KEY))]
        defs += [sql.SQL("{} {}").format(sql.Identifier(k), sql.SQL(types[k])) for k in cols]
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(t, sql.SQL(", ").join(defs)))
        copy = sql.SQL("COPY {} ({}) FROM STDIN").format(t, sql.SQL(", ").join(map(sql.Identifier, names)))
        with conn.cursor() as cur, cur.copy(copy) as out:
            for tn in tenants:
                out.write_row([tn["id"], tn.get(KEY), *(_pg_cell(tn.get(k), types[k]) for k in cols)])
        if indexes:  # after the rows: a GIN index filled row by row keeps a long pending list
            conn.execute(sql.SQL("CREATE INDEX ON {} USING gin ({}) WITH (fastupdate = off)").format(
                t, sql.Identifier(KEY)))
        conn.execute(sql.SQL("ANALYZE {}").format(t))


def _pg_cell(value: Any, type_: str) -> Any:
    return json.dumps(value) if value is not None and type_ == "jsonb" else value


def sqlite_cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return json.dumps(value)
    return value


def write_sqlite_tenants(path: Path, table: str, tenants: list[Mapping[str, Any]], *, indexes: bool = True) -> None:
    cols = list(columns_of(tenants))
    names = ["id", KEY, *cols]
    with closing(sqlite3.connect(path)) as db, db:  # closed, and committed
        db.execute(f"DROP TABLE IF EXISTS [{table}]")
        db.execute(f"CREATE TABLE [{table}] (id TEXT PRIMARY KEY, {KEY} TEXT, "
                   + ", ".join(f"[{c}]" for c in cols) + ")")
        if indexes:
            db.execute(f"CREATE INDEX [{table}_keys] ON [{table}] ({KEY})")
        rows = []
        for tn in tenants:
            keys = tn.get(KEY) or []
            if len(keys) > 1:
                raise ValueError(f"tenant {tn['id']}: one key hash per row in a lookup-mode SQLite table")
            rows.append([tn["id"], keys[0] if keys else None, *(sqlite_cell(tn.get(c)) for c in cols)])
        db.executemany(f"INSERT INTO [{table}] VALUES ({', '.join('?' * len(names))})", rows)
