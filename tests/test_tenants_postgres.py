"""Tenant stores read one row at a time: a real PostgreSQL server (session fixture) and SQLite
in mode=lookup. One set of tenants (policies/tenants.yaml) gives the same tenants and the same
compiled policies from YAML, SQLite (both modes) and PostgreSQL."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from routecar.catalog import DEFAULT_CATALOG, load_catalog
from routecar.errors import ConfigError, TenantSourceUnavailable
from routecar.tenants.postgres import PostgresStore, parse_postgres_url, pg_value
from routecar.tenants.rules import compile_ir, compile_policy, load_rules
from routecar.tenants.store import SqliteStore
from routecar.tenants.table import Tenant, hash_api_key, load_tenants, parse_source
from tests.fakes.postgres import PgServer, free_port
from tests.fakes.tenant_tables import write_pg_tenants, write_sqlite_tenants

POLICIES = Path(__file__).resolve().parents[1] / "policies"
SHIPPED = yaml.safe_load((POLICIES / "tenants.yaml").read_text())["tenants"]
_names = itertools.count()


@pytest.fixture
def pg_table(postgres: PgServer) -> Callable[..., str]:
    """Write tenants into a new table; returns its routecar URL."""
    def make(tenants: list[dict[str, Any]] = SHIPPED, **kw: Any) -> str:
        name = f"tenants_{next(_names)}"
        write_pg_tenants(postgres.dsn, name, tenants, **kw)
        return postgres.url(name)
    return make


@pytest.fixture
def pg_store() -> Iterator[Callable[[str], PostgresStore]]:
    opened: list[PostgresStore] = []

    def open_(url: str, **kw: Any) -> PostgresStore:
        opened.append(PostgresStore(url, **kw))
        return opened[-1]
    yield open_
    for s in opened:
        s.close()


def sql(postgres: PgServer, *statements: str) -> None:
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        for s in statements:
            conn.execute(s)  # type: ignore[arg-type]


def sqlite_url(tmp_path: Path, tenants: list[dict[str, Any]] = SHIPPED, mode: str = "lookup") -> str:
    path = tmp_path / "t.db"
    write_sqlite_tenants(path, "tenants", tenants)
    return f"sqlite:///{path}?table=tenants&mode={mode}"


# --- one set of tenants, every source -----------------------------------------------------

def test_same_tenants_and_policies_from_yaml_sqlite_and_postgres(pg_table, pg_store, tmp_path: Path) -> None:
    table = load_tenants(POLICIES / "tenants.yaml")
    pg = pg_store(pg_table())
    lite = SqliteStore(parse_source(sqlite_url(tmp_path)))
    whole_sqlite = load_tenants(sqlite_url(tmp_path, mode="table"))
    rules = load_rules(POLICIES / "rules.yaml")
    registry = load_catalog(DEFAULT_CATALOG).registry
    try:
        for expected in table:
            found = [pg.by_id(expected.id), lite.by_id(expected.id), whole_sqlite.get(expected.id)]
            assert found == [expected] * 3
            policies = {compile_policy(t, rules, registry).digest for t in found if t is not None}
            assert policies == {compile_policy(expected, rules, registry).digest}
            assert {repr(compile_ir(t, rules)) for t in found if t} == {repr(compile_ir(expected, rules))}
        acme_key = hash_api_key("demo-key-acme")
        assert pg.by_key_hash(acme_key) == lite.by_key_hash(acme_key) == table.get("acme-free")
        assert pg.by_id("nobody") is lite.by_id("nobody") is None
        assert pg.by_key_hash("0" * 64) is lite.by_key_hash("0" * 64) is None
        assert sorted(t.id for t in pg.scan()) == sorted(table.ids()) == sorted(t.id for t in lite.scan())
        assert pg.duplicates() == lite.duplicates() == []
        assert pg.unindexed() == lite.unindexed() == []
    finally:
        lite.close()


# --- PostgreSQL ------------------------------------------------------------------------------

def test_pg_typed_columns_become_attributes(postgres: PgServer, pg_store) -> None:
    sql(postgres, "DROP TABLE IF EXISTS typed",
        "CREATE TABLE typed (id bigint PRIMARY KEY, api_key_sha256 text, meta jsonb, tags varchar(20)[], "
        "floor numeric, n numeric, seats integer, since timestamptz, ext uuid, note text, gone text)",
        f"INSERT INTO typed VALUES (7, '{'a' * 64}', '{{\"tier\": [1, 2]}}', '{{x,y}}', 0.50, 3, 12, "
        "'2024-05-01 10:00:00+00', '12345678-1234-5678-1234-567812345678', '42', NULL)")
    store = pg_store(postgres.url("typed"))
    t = store.by_id("7")
    assert t == store.by_key_hash("a" * 64)
    assert t.id == "7" and t.key_sha256 == ("a" * 64,)
    assert dict(t.attributes) == {
        "meta": {"tier": [1, 2]}, "tags": ("x", "y"), "floor": 0.5, "n": 3, "seats": 12,
        "since": "2024-05-01T10:00:00+00:00", "ext": "12345678-1234-5678-1234-567812345678",
        "note": "42"}  # text stays text; NULL is absent
    assert store.by_id("abc") is None  # not an integer: no such tenant, not an error


def test_pg_value_conversions() -> None:
    from decimal import Decimal
    assert [pg_value(Decimal(s)) for s in ("2", "2.0", "0.55", "1E+2")] == [2, 2.0, 0.55, 100]
    assert pg_value([Decimal("1"), {"a": b"\x01"}]) == [1, {"a": "01"}]


def test_pg_several_keys_need_an_array_column(postgres: PgServer, pg_store) -> None:
    sql(postgres, "DROP TABLE IF EXISTS onekey",
        "CREATE TABLE onekey (id text PRIMARY KEY, api_key_sha256 text)",
        f"INSERT INTO onekey VALUES ('two', '{'a' * 64}|{'b' * 64}')")
    store = pg_store(postgres.url("onekey"))
    with pytest.raises(ConfigError, match="api_key_sha256 is a text column and holds 2 hashes.*text\\[\\]"):
        store.by_id("two")
    with pytest.raises(ConfigError, match="several hashes|2 hashes"):
        store.by_key_hash("a" * 64 + "|" + "b" * 64)
    errors = [e for e in store.scan() if isinstance(e, ConfigError)]
    assert len(errors) == 1 and "tenant 'two'" in errors[0].message


def test_pg_duplicates_unindexed_and_bad_rows(postgres: PgServer, pg_store) -> None:
    key = "c" * 64
    sql(postgres, "DROP TABLE IF EXISTS messy",
        "CREATE TABLE messy (id text, api_key_sha256 text[], floor text)",
        f"INSERT INTO messy VALUES ('a', ARRAY['{key}'], NULL), ('a', NULL, NULL), "
        f"('b', ARRAY['{key}'], NULL), ('c', ARRAY['not-hex'], NULL)")
    store = pg_store(postgres.url("messy"))
    with pytest.raises(ConfigError, match="several rows have id 'a'"):
        store.by_id("a")
    with pytest.raises(ConfigError, match="several rows have api_key_sha256 cccccccccccc…"):
        store.by_key_hash(key)
    assert store.duplicates() == ["id 'a' is on several rows", "api_key_sha256 'cccccccccccc…' is on several rows"]
    assert store.unindexed() == ["no btree or hash index on id: every lookup reads the whole table",
                                 "no gin index on api_key_sha256: every lookup reads the whole table"]
    bad = [e.message for e in store.scan() if isinstance(e, ConfigError)]
    assert bad == [f"{store.label}: row (tenant 'c'): bad api_key_sha256 'not-hex': expected 64 hex digits "
                   "(sha256 of the key)"]


def test_pg_configuration_errors(postgres: PgServer) -> None:
    sql(postgres, "DROP TABLE IF EXISTS noid", "CREATE TABLE noid (name text)",
        "DROP TABLE IF EXISTS badkey", "CREATE TABLE badkey (id text, api_key_sha256 integer)")
    cases = [
        (postgres.url("missing"), "no table 'missing'"),
        (postgres.url("noid"), "table 'noid' has no 'id' column (columns: name)"),
        (postgres.url("badkey"), "column api_key_sha256 is integer: expected text"),
        (postgres.url("bad-name"), "bad table name 'bad-name'"),
        (f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/postgres?table=t", "cannot connect: connection failed"),
        (postgres.url("tenants", user="nobody"), 'role "nobody" does not exist'),
    ]
    for url, message in cases:
        with pytest.raises(ConfigError) as ei:
            PostgresStore(url, timeout_s=1).close()
        assert message in ei.value.message
        assert "s3cret" not in ei.value.message


def test_parse_postgres_url_keeps_libpq_options_and_hides_the_password() -> None:
    conninfo, table, label = parse_postgres_url(
        "postgresql://app:pw@db.internal:5433/crm?table=billing.accounts&sslmode=require")
    assert table == ("billing", "accounts")
    assert conninfo == "postgresql://app:pw@db.internal:5433/crm?sslmode=require"
    assert label == "postgresql://app:***@db.internal:5433/crm?table=billing.accounts&sslmode=require"


def test_pg_outage_and_recovery_without_a_new_store(postgres: PgServer, pg_table, pg_store) -> None:
    store = pg_store(pg_table(), timeout_s=1)
    assert store.by_id("acme-free") is not None
    postgres.stop()
    try:
        with pytest.raises(TenantSourceUnavailable) as ei:
            store.by_id("acme-free")
        assert "s3cret" not in ei.value.message
        with pytest.raises(TenantSourceUnavailable):
            store.ping()
    finally:
        postgres.start()
    # the pool reconnects by itself: the same store answers again, once the pool's backoff
    # (1 s, 2 s, ...: longer the longer the restart took) lets it try (polled with a deadline)
    deadline = time.monotonic() + 20
    while True:
        try:
            found = store.by_id("acme-free")
            break
        except TenantSourceUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert found is not None and found.id == "acme-free"
    store.ping()


def test_pg_view_over_an_accounts_table(postgres: PgServer, pg_store) -> None:
    sql(postgres, "DROP VIEW IF EXISTS rc_tenants", "DROP TABLE IF EXISTS accounts",
        "CREATE TABLE accounts (account_id integer PRIMARY KEY, tier text, internal_note text)",
        "INSERT INTO accounts VALUES (1, 'free', 'x'), (2, 'pro', 'y')",
        "CREATE VIEW rc_tenants AS SELECT account_id AS id, tier AS plan FROM accounts")
    store = pg_store(postgres.url("rc_tenants"))
    assert store.by_id("2") == Tenant("2", {"plan": "pro"})
    assert store.unindexed() == ['"rc_tenants" is a view: index the columns of its base table behind id']
