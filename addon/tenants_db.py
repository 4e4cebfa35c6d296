"""Tenant stores read one tenant at a time: PostgreSQL, and large SQLite tables.

    postgresql://USER@HOST:PORT/DB?table=tenants          psycopg 3 and a small connection pool
    sqlite:///var/lib/app.db?table=tenants&mode=lookup    a read-only connection per thread

A store answers `by_id` and `by_key_hash` with one indexed query each and
streams the whole table for `routecar check` (`scan`, a server-side cursor
for PostgreSQL); it keeps no tenant itself (caching is `tenant_lookup`). Every
method blocks: the sidecar calls them from a thread pool, never from its
event loop. Rows become tenants exactly as in the file sources
(`tenants.tenant_from_fields`): `id` is the id, `api_key_sha256` the key
hashes, every other column an attribute, NULL is absent. PostgreSQL values
keep their SQL type (json/jsonb and arrays become lists and objects, numeric a
number, text is always a string); SQLite text cells are parsed as in the
table mode (docs/tenants.md).

    ConfigError               bad URL, no such table, no `id` column, a bad row (names the tenant)
    TenantSourceUnavailable   the database cannot answer now (down, timeout, connection lost)
"""

from __future__ import annotations

import datetime
import re
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import closing
from decimal import Decimal
from typing import Any, Protocol

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.rows import dict_row

from .errors import ConfigError, TenantSourceUnavailable
from .tenants import KEY_FIELD, Tenant, _connect_ro, _Spec, tenant_from_fields

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DUPLICATES_SHOWN = 10


class TenantStore(Protocol):
    """What `TenantLookup` and `routecar check` need from a database of tenants."""

    label: str

    def by_id(self, tenant_id: str) -> Tenant | None: ...
    def by_key_hash(self, hex_digest: str) -> Tenant | None: ...
    def scan(self) -> Iterator[Tenant | ConfigError]: ...
    def duplicates(self) -> list[str]: ...
    def unindexed(self) -> list[str]: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...


def _one(label: str, rows: list[Any], what: str) -> Any:
    if len(rows) > 1:
        raise ConfigError(f"{label}: several rows have {what}: a tenant must be unique")
    return rows[0] if rows else None


def _single_key(label: str, tenant: Tenant, column_type: str) -> Tenant:
    # An equality lookup finds a row by its whole cell: a cell listing several hashes
    # would make all but one of them silently unusable.
    if len(tenant.key_sha256) > 1:
        raise ConfigError(f"{label}: tenant {tenant.id!r}: {KEY_FIELD} is a {column_type} column and holds "
                          f"{len(tenant.key_sha256)} hashes: put one per row here "
                          "(PostgreSQL: make it text[] for several keys)", tenant=tenant.id)
    return tenant


# --- PostgreSQL -----------------------------------------------------------------------

def parse_postgres_url(url: str) -> tuple[str, tuple[str, ...], str]:
    """(conninfo for psycopg, table name parts, label without the password)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    tables = [v for k, v in query if k == "table"] or ["tenants"]
    table = tuple(tables[-1].split("."))
    if not 1 <= len(table) <= 2 or not all(_NAME.match(p) for p in table):
        raise ConfigError(f"{url.split('?')[0]}: bad table name {tables[-1]!r} (expected name or schema.name)")
    rest = [(k, v) for k, v in query if k != "table"]
    conninfo = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(rest)))
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    label = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return conninfo, table, label


def pg_value(value: Any) -> Any:
    """A PostgreSQL value as plain JSON data (numeric -> int/float, timestamps -> ISO text)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Decimal):
        exact = value.is_finite() and value == value.to_integral_value() and value.as_tuple().exponent >= 0
        return int(value) if exact else float(value)
    if isinstance(value, (list, tuple)):
        return [pg_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): pg_value(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)  # uuid, inet, interval, ...


_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout,
                psycopg_pool.PoolClosed, psycopg.errors.QueryCanceled)


class PostgresStore:
    """Tenants in a PostgreSQL table, one query per lookup, over a small connection pool."""

    def __init__(self, url: str, *, timeout_s: float = 2.0, max_connections: int = 4) -> None:
        self.url = url
        conninfo, table, self.label = parse_postgres_url(url)
        self._table = sql.Identifier(*table)
        extra: dict[str, Any] = {"autocommit": True}
        given = psycopg.conninfo.conninfo_to_dict(conninfo)
        if "connect_timeout" not in given:
            extra["connect_timeout"] = max(1, round(timeout_s))
        if "options" not in given:  # a stuck query must not hold a lookup for long
            extra["options"] = f"-c statement_timeout={int(timeout_s * 1000)}"
        if "application_name" not in given:
            extra["application_name"] = "routecar"
        self._conninfo, self._extra = conninfo, extra
        self._pool = psycopg_pool.ConnectionPool(
            conninfo, kwargs=extra, min_size=1, max_size=max_connections, open=False, timeout=timeout_s,
            # Checked on checkout: after the server restarted, a pooled connection is dead,
            # and one round trip is cheaper than failing a lookup with it.
            check=psycopg_pool.ConnectionPool.check_connection, name="routecar-tenants",
            # A short reconnect_timeout: the pool's backoff has no ceiling, and after a long outage
            # it would wait minutes before trying again; giving up lets the next lookup start afresh.
            reconnect_timeout=5.0)
        try:
            self._pool.open(wait=True, timeout=timeout_s)
            with self._pool.connection() as conn:
                self._columns = self._describe(conn, table)
        except _UNAVAILABLE as e:
            self._pool.close()
            raise ConfigError(f"{self.label}: cannot connect: {_first_line(e)}") from None
        except ConfigError:
            self._pool.close()
            raise
        key_type = self._columns.get(KEY_FIELD)
        self._key_is_array = bool(key_type and key_type.endswith("[]"))
        self._key_type = key_type
        select = sql.SQL("SELECT * FROM {} WHERE ").format(self._table)
        self._q_id = select + sql.SQL("{} = %s LIMIT 2").format(sql.Identifier("id"))
        key = sql.Identifier(KEY_FIELD)
        self._q_key = select + (sql.SQL("{} @> ARRAY[%s]::text[] LIMIT 2").format(key) if self._key_is_array
                                else sql.SQL("{} = %s LIMIT 2").format(key))

    def _describe(self, conn: psycopg.Connection[Any], table: tuple[str, ...]) -> dict[str, str]:
        self._regclass = self._table.as_string(conn)
        rows = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (self._regclass,)).fetchall()
        if not rows:
            raise ConfigError(f"{self.label}: no table {'.'.join(table)!r}")
        columns = {name: type_ for name, type_ in rows}
        if "id" not in columns:
            raise ConfigError(f"{self.label}: table {'.'.join(table)!r} has no 'id' column "
                              f"(columns: {', '.join(columns)})")
        key_type = columns.get(KEY_FIELD)
        if key_type is not None and key_type.removesuffix("[]").split("(")[0] not in ("text", "character varying"):
            raise ConfigError(f"{self.label}: column {KEY_FIELD} is {key_type}: expected text (one hash) "
                              "or text[] (several)")
        return columns

    def _tenant(self, row: Mapping[str, Any]) -> Tenant:
        fields = {k: pg_value(v) for k, v in row.items()}
        tenant = tenant_from_fields(self.label, "row", fields.pop("id"), fields, fields.pop(KEY_FIELD, None),
                                    text=False, objects=True)
        return tenant if self._key_is_array else _single_key(self.label, tenant, "text")

    def _query(self, query: sql.Composable, param: str) -> list[dict[str, Any]]:
        try:
            with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(query, (param,)).fetchall()
        except psycopg.DataError:
            return []  # e.g. "abc" for an integer id column: no such tenant
        except _UNAVAILABLE as e:
            raise TenantSourceUnavailable(f"{self.label}: {_first_line(e)}") from None
        except psycopg.Error as e:  # table dropped or altered while running
            raise TenantSourceUnavailable(f"{self.label}: {type(e).__name__}: {_first_line(e)}") from None

    def by_id(self, tenant_id: str) -> Tenant | None:
        row = _one(self.label, self._query(self._q_id, tenant_id), f"id {tenant_id!r}")
        return self._tenant(row) if row is not None else None

    def by_key_hash(self, hex_digest: str) -> Tenant | None:
        if self._key_type is None:
            return None
        row = _one(self.label, self._query(self._q_key, hex_digest), f"{KEY_FIELD} {hex_digest[:12]}…")
        return self._tenant(row) if row is not None else None

    def ping(self) -> None:
        try:
            with self._pool.connection() as conn:
                conn.execute("SELECT 1")
        except (*_UNAVAILABLE, psycopg.Error) as e:
            raise TenantSourceUnavailable(f"{self.label}: {_first_line(e)}") from None

    def scan(self, batch: int = 1000) -> Iterator[Tenant | ConfigError]:
        """Every row, through a server-side cursor: memory stays bounded by `batch` rows."""
        try:
            # Not from the pool: a named cursor needs a transaction, pooled connections autocommit.
            with psycopg.connect(self._conninfo, **{**self._extra, "autocommit": False}) as conn:
                with conn.cursor(name="routecar_check", row_factory=dict_row) as cur:
                    cur.itersize = batch
                    cur.execute(sql.SQL("SELECT * FROM {} ORDER BY {}").format(self._table, sql.Identifier("id")))
                    for row in cur:
                        try:
                            yield self._tenant(row)
                        except ConfigError as e:
                            yield e
        except psycopg.Error as e:
            raise ConfigError(f"{self.label}: {_first_line(e)}") from None

    def duplicates(self) -> list[str]:
        key = sql.Identifier(KEY_FIELD)
        queries = [("id", sql.SQL("SELECT id::text FROM {} GROUP BY id HAVING count(*) > 1 LIMIT %s")
                    .format(self._table))]
        if self._key_type is not None:
            keys = sql.SQL("unnest({})").format(key) if self._key_is_array else key
            queries.append((KEY_FIELD, sql.SQL("SELECT k FROM (SELECT {} AS k FROM {}) s WHERE k <> '' "
                                               "GROUP BY k HAVING count(*) > 1 LIMIT %s").format(keys, self._table)))
        out = []
        with self._pool.connection() as conn:
            for what, q in queries:
                for (value,) in conn.execute(q, (_DUPLICATES_SHOWN,)).fetchall():
                    shown = value if what == "id" else f"{value[:12]}…"
                    out.append(f"{what} {shown!r} is on several rows")
        return out

    def unindexed(self) -> list[str]:
        rows = self._indexes()
        wanted = {"id": ("btree", "hash")}
        if self._key_type is not None:
            wanted[KEY_FIELD] = ("gin",) if self._key_is_array else ("btree", "hash")
        return [f"no {' or '.join(kinds)} index on {col}: every lookup reads the whole table"
                for col, kinds in wanted.items() if not any(c == col and am in kinds for c, am in rows)]

    def _indexes(self) -> list[tuple[str, str]]:
        with self._pool.connection() as conn:
            return conn.execute(
                "SELECT a.attname, am.amname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_am am ON am.oid = c.relam JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass(%s)", (self._regclass,)).fetchall()

    def close(self) -> None:
        self._pool.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


# --- SQLite (mode=lookup) ----------------------------------------------------------------

class SqliteStore:
    """A SQLite tenant table read one row at a time (for tables too large to hold in memory).

    Cells are parsed exactly as when the whole table is loaded; `api_key_sha256`
    holds one hash per row (the lookup is an indexed equality).
    """

    def __init__(self, spec: _Spec) -> None:
        self.label = spec.label
        self._spec = spec
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            conn = self._conn()
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info([{spec.table}])")]
        except (OSError, sqlite3.Error) as e:
            self.close()
            raise ConfigError(f"{self.label}: cannot read: {getattr(e, 'strerror', None) or e}") from None
        if not columns:
            self.close()
            raise ConfigError(f"{self.label}: no table {spec.table!r}")
        if "id" not in columns:
            self.close()
            raise ConfigError(f"{self.label}: table {spec.table!r} has no 'id' column (columns: {', '.join(columns)})")
        self._has_keys = KEY_FIELD in columns
        self._select = f"SELECT rowid, * FROM [{spec.table}] WHERE "

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect_ro(self._spec, any_thread=True)  # closed by close(), from any thread
            with self._lock:
                self._opened.append(conn)
            self._local.conn = conn
        return conn

    def _tenant(self, names: list[str], row: tuple[Any, ...]) -> Tenant:
        fields = dict(zip(names[1:], row[1:], strict=True))
        tenant = tenant_from_fields(self.label, f"rowid {row[0]}", fields.pop("id"), fields,
                                    fields.pop(KEY_FIELD, None), text=True)
        return _single_key(self.label, tenant, "lookup-mode SQLite")

    def _find(self, where: str, param: str, what: str) -> Tenant | None:
        try:
            cur = self._conn().execute(self._select + where + " LIMIT 2", (param,))
            rows = cur.fetchall()
        except (OSError, sqlite3.Error) as e:
            raise TenantSourceUnavailable(f"{self.label}: {getattr(e, 'strerror', None) or e}") from None
        row = _one(self.label, rows, what)
        return self._tenant([d[0] for d in cur.description], row) if row is not None else None

    def by_id(self, tenant_id: str) -> Tenant | None:
        return self._find("id = ?", tenant_id, f"id {tenant_id!r}")

    def by_key_hash(self, hex_digest: str) -> Tenant | None:
        if not self._has_keys:
            return None
        return self._find(f"{KEY_FIELD} = ?", hex_digest, f"{KEY_FIELD} {hex_digest[:12]}…")

    def ping(self) -> None:
        try:
            self._conn().execute(f"SELECT 1 FROM [{self._spec.table}] LIMIT 1").fetchall()
        except (OSError, sqlite3.Error) as e:
            raise TenantSourceUnavailable(f"{self.label}: {getattr(e, 'strerror', None) or e}") from None

    def scan(self) -> Iterator[Tenant | ConfigError]:
        try:
            with closing(_connect_ro(self._spec)) as conn:  # its own connection: a cursor streams rows
                cur = conn.execute(f"SELECT rowid, * FROM [{self._spec.table}] ORDER BY id")
                names = [d[0] for d in cur.description]
                for row in cur:
                    try:
                        yield self._tenant(names, row)
                    except ConfigError as e:
                        yield e
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(f"{self.label}: {getattr(e, 'strerror', None) or e}") from None

    def duplicates(self) -> list[str]:
        t = self._spec.table
        out = [f"id {v!r} is on several rows" for (v,) in self._conn().execute(
            f"SELECT id FROM [{t}] GROUP BY id HAVING count(*) > 1 LIMIT ?", (_DUPLICATES_SHOWN,))]
        if self._has_keys:
            out += [f"{KEY_FIELD} {v[:12]!r}… is on several rows" for (v,) in self._conn().execute(
                f"SELECT {KEY_FIELD} FROM [{t}] WHERE {KEY_FIELD} <> '' GROUP BY {KEY_FIELD} "
                "HAVING count(*) > 1 LIMIT ?", (_DUPLICATES_SHOWN,))]
        return out

    def unindexed(self) -> list[str]:
        columns = ["id"] + ([KEY_FIELD] if self._has_keys else [])
        out = []
        for col in columns:
            plan = " ".join(str(r[-1]) for r in self._conn().execute(
                f"EXPLAIN QUERY PLAN SELECT * FROM [{self._spec.table}] WHERE {col} = ?", ("x",)))
            if not plan.startswith("SEARCH"):
                out.append(f"no index on {col}: every lookup reads the whole table")
        return out

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            conn.close()
