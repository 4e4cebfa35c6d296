"""Tenant stores read one tenant at a time (`TenantStore`), and the SQLite one.

    sqlite:///var/lib/app.db?table=tenants&mode=lookup    a read-only connection per thread
    postgresql://USER@HOST:PORT/DB?table=tenants          `.postgres.PostgresStore`

A store answers `by_id` and `by_key_hash` with one indexed query each and
streams the whole table for `routecar check` (`scan`); it keeps no tenant
itself (caching is `.lookup.TenantLookup`). Every method blocks: the sidecar
calls them from a thread pool, never from its event loop. Rows become tenants
exactly as in the file sources (`.table.tenant_from_fields`): `id` is the id,
`api_key_sha256` the key hashes, every other column an attribute, NULL is
absent; SQLite text cells are parsed as when the whole table is loaded.

    ConfigError               bad source, no such table, no `id` column, a bad row (names the tenant)
    TenantSourceUnavailable   the database cannot answer now (down, file gone, connection lost)
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from typing import Any, Protocol

from ..errors import ConfigError, TenantSourceUnavailable
from .table import KEY_FIELD, Tenant, _connect_ro, _Spec, tenant_from_fields

DUPLICATES_SHOWN = 10


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


def one_row(label: str, rows: list[Any], what: str) -> Any:
    if len(rows) > 1:
        raise ConfigError(f"{label}: several rows have {what}: a tenant must be unique")
    return rows[0] if rows else None


def single_key(label: str, tenant: Tenant, column_type: str) -> Tenant:
    # An equality lookup finds a row by its whole cell: a cell listing several hashes
    # would make all but one of them silently unusable.
    if len(tenant.key_sha256) > 1:
        raise ConfigError(f"{label}: tenant {tenant.id!r}: {KEY_FIELD} is a {column_type} column and holds "
                          f"{len(tenant.key_sha256)} hashes: put one per row here "
                          "(PostgreSQL: make it text[] for several keys)", tenant=tenant.id)
    return tenant


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
        return single_key(self.label, tenant, "lookup-mode SQLite")

    def _find(self, where: str, param: str, what: str) -> Tenant | None:
        try:
            cur = self._conn().execute(self._select + where + " LIMIT 2", (param,))
            rows = cur.fetchall()
        except (OSError, sqlite3.Error) as e:
            raise TenantSourceUnavailable(f"{self.label}: {getattr(e, 'strerror', None) or e}") from None
        row = one_row(self.label, rows, what)
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
            f"SELECT id FROM [{t}] GROUP BY id HAVING count(*) > 1 LIMIT ?", (DUPLICATES_SHOWN,))]
        if self._has_keys:
            out += [f"{KEY_FIELD} {v[:12]!r}… is on several rows" for (v,) in self._conn().execute(
                f"SELECT {KEY_FIELD} FROM [{t}] WHERE {KEY_FIELD} <> '' GROUP BY {KEY_FIELD} "
                "HAVING count(*) > 1 LIMIT ?", (DUPLICATES_SHOWN,))]
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
