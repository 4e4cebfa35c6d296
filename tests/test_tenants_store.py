"""The SQLite tenant store (mode=lookup): one row at a time, the same tenants as when the whole
table is loaded, clear errors, an outage when the file goes away."""

from __future__ import annotations

import concurrent.futures
import sqlite3
from pathlib import Path

import pytest
import yaml

from routecar.errors import ConfigError, TenantSourceUnavailable
from routecar.tenants.store import SqliteStore
from routecar.tenants.table import Tenant, parse_source
from tests.fakes.tenant_tables import write_sqlite_tenants

POLICIES = Path(__file__).resolve().parents[1] / "policies"
SHIPPED = yaml.safe_load((POLICIES / "tenants.yaml").read_text())["tenants"]


def test_sqlite_lookup_errors(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE noid (name TEXT)")
        conn.execute("CREATE TABLE t (id TEXT, api_key_sha256 TEXT, plan TEXT)")
        conn.execute("INSERT INTO t VALUES ('a', ?, 'free'), ('a', NULL, 'pro'), ('b', ?, '{\"x\": 1}')",
                     ("d" * 64, "d" * 64 + "|" + "e" * 64))
    with pytest.raises(ConfigError, match="no table 'nope'"):
        SqliteStore(parse_source(f"sqlite:///{db}?table=nope"))
    with pytest.raises(ConfigError, match="has no 'id' column"):
        SqliteStore(parse_source(f"sqlite:///{db}?table=noid"))
    with pytest.raises(ConfigError, match="cannot read"):
        SqliteStore(parse_source(f"sqlite:///{tmp_path}/absent.db?table=t"))
    store = SqliteStore(parse_source(f"sqlite:///{db}?table=t&mode=lookup"))
    try:
        with pytest.raises(ConfigError, match="several rows have id 'a'"):
            store.by_id("a")
        with pytest.raises(ConfigError, match="rowid 3 \\(tenant 'b'\\): attribute 'plan'"):
            store.by_id("b")
        assert store.duplicates() == ["id 'a' is on several rows"]
        assert store.unindexed() == ["no index on id: every lookup reads the whole table",
                                     "no index on api_key_sha256: every lookup reads the whole table"]
        db.unlink()  # the file going away is an outage, not a crash (a new thread opens it anew)
        with concurrent.futures.ThreadPoolExecutor(1) as pool, pytest.raises(TenantSourceUnavailable):
            pool.submit(store.ping).result()
    finally:
        store.close()


def test_sqlite_store_threads_get_their_own_connection(tmp_path: Path) -> None:
    write_sqlite_tenants(tmp_path / "t.db", "tenants", SHIPPED)
    store = SqliteStore(parse_source(f"sqlite:///{tmp_path}/t.db?table=tenants&mode=lookup"))
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            found = list(pool.map(store.by_id, [t["id"] for t in SHIPPED] * 20))
        assert [t.id for t in found] == [t["id"] for t in SHIPPED] * 20
        assert isinstance(found[0], Tenant)
    finally:
        store.close()
