"""TenantLookup: the cache in front of a tenant database (ttl, misses, bound, outage grace,
fail-fast while down, shared queries), driven with a fake store and an injected clock."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from routecar.errors import ConfigError, TenantSourceUnavailable
from routecar.tenants.lookup import TenantLookup, lookup_mode, open_tenants
from routecar.tenants.table import Tenant, TenantSource, hash_api_key

KEY = hash_api_key("sk-acme")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeStore:
    """A dict of tenants; `down` makes every call fail like a stopped server."""

    label = "fake://tenants"

    def __init__(self, *tenants: Tenant) -> None:
        self.rows = {t.id: t for t in tenants}
        self.down = False
        self.calls: list[tuple[str, str]] = []
        self.gate: threading.Event | None = None

    def _check(self, kind: str, value: str) -> None:
        self.calls.append((kind, value))
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.down:
            raise TenantSourceUnavailable(f"{self.label}: connection refused")

    def by_id(self, tenant_id: str) -> Tenant | None:
        self._check("id", tenant_id)
        if tenant_id == "broken":
            raise ConfigError(f"{self.label}: row (tenant 'broken'): attribute 'x': bad", tenant="broken")
        return self.rows.get(tenant_id)

    def by_key_hash(self, hex_digest: str) -> Tenant | None:
        self._check("key", hex_digest)
        return next((t for t in self.rows.values() if hex_digest in t.key_sha256), None)

    def scan(self) -> Iterator[Tenant | ConfigError]:
        yield from self.rows.values()

    def duplicates(self) -> list[str]:
        return []

    def unindexed(self) -> list[str]:
        return []

    def ping(self) -> None:
        self._check("ping", "")

    def close(self) -> None:
        pass


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> FakeStore:
    return FakeStore(Tenant("acme", {"plan": "free"}, (KEY,)), Tenant("globex", {"plan": "pro"}))


@pytest.fixture
def lookup(store: FakeStore, clock: Clock) -> Iterator[TenantLookup]:
    lk = TenantLookup(store, clock=clock, ttl_s=30, grace_s=300, max_entries=100, retry_s=1)
    yield lk
    lk.close()


def test_hits_and_misses_are_cached_for_the_ttl(lookup: TenantLookup, store: FakeStore, clock: Clock) -> None:
    assert lookup.get_blocking("acme").attributes["plan"] == "free"
    assert lookup.get_blocking("nobody") is None
    assert lookup.by_api_key_blocking("sk-acme").id == "acme"
    for _ in range(3):
        lookup.get_blocking("acme"), lookup.get_blocking("nobody"), lookup.by_api_key_blocking("sk-acme")
    assert store.calls == [("id", "acme"), ("id", "nobody"), ("key", KEY)]
    # a change in the database is in effect once the ttl has passed
    store.rows["acme"] = Tenant("acme", {"plan": "enterprise"}, (KEY,))
    store.rows["nobody"] = Tenant("nobody", {})
    clock.now += 29.9
    assert lookup.get_blocking("acme").attributes["plan"] == "free"
    clock.now += 0.1
    assert lookup.get_blocking("acme").attributes["plan"] == "enterprise"
    assert lookup.get_blocking("nobody") is not None
    assert lookup.status()["queries"] == 5


def test_a_deleted_tenant_is_a_miss_after_the_ttl(lookup: TenantLookup, store: FakeStore, clock: Clock) -> None:
    assert lookup.get_blocking("globex") is not None
    del store.rows["globex"]
    clock.now += 30
    for _ in range(3):
        assert lookup.get_blocking("globex") is None
    assert store.calls == [("id", "globex")] * 2  # the miss replaced the found entry
    store.down = True
    clock.now += 31
    with pytest.raises(TenantSourceUnavailable):  # never the deleted tenant's old record
        lookup.get_blocking("globex")


def test_bad_row_is_an_error_cached_like_a_miss(lookup: TenantLookup, store: FakeStore) -> None:
    for _ in range(2):
        with pytest.raises(ConfigError) as ei:
            lookup.get_blocking("broken")
        assert ei.value.message == "row (tenant 'broken'): attribute 'x': bad"  # not the database's URL
        assert ei.value.tenant == "broken"
    assert store.calls == [("id", "broken")]


def test_cache_is_bounded(store: FakeStore, clock: Clock) -> None:
    lk = TenantLookup(store, clock=clock, ttl_s=30, max_entries=10)
    try:
        for i in range(50):
            store.rows[f"t{i}"] = Tenant(f"t{i}", {})
            lk.get_blocking(f"t{i}")
            lk.get_blocking(f"missing{i}")
        st = lk.status()
        assert (st["cached"], st["cached_misses"]) == (10, 10)
    finally:
        lk.close()


def test_outage_serves_cached_tenants_for_the_grace_then_refuses(lookup: TenantLookup, store: FakeStore,
                                                                clock: Clock) -> None:
    lookup.get_blocking("acme")
    lookup.get_blocking("nobody")
    store.down = True
    clock.now += 31  # stale: a query is tried, fails, the stale tenant is served
    assert lookup.get_blocking("acme").id == "acme"
    st = lookup.status()
    assert st["available"] is False and "connection refused" in st["last_error"]
    # a miss is never served stale, and an uncached tenant cannot be looked up
    for tid in ("nobody", "globex"):
        with pytest.raises(TenantSourceUnavailable) as ei:
            lookup.get_blocking(tid)
        assert ei.value.status == 503 and ei.value.code == "tenant_source_unavailable"
        assert ei.value.tenant == tid and "fake://" not in ei.value.message
    with pytest.raises(TenantSourceUnavailable, match="API key"):
        lookup.by_api_key_blocking("sk-other")
    clock.now += 300  # past ttl + grace: acme too
    with pytest.raises(TenantSourceUnavailable):
        lookup.get_blocking("acme")


def test_fails_fast_while_down_and_recovers_without_restart(lookup: TenantLookup, store: FakeStore,
                                                           clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    store.down = True
    with pytest.raises(TenantSourceUnavailable):
        lookup.get_blocking("acme")
    n = len(store.calls)
    for tid in ("acme", "globex", "x"):  # within retry_s: no query at all
        with pytest.raises(TenantSourceUnavailable):
            lookup.get_blocking(tid)
    assert len(store.calls) == n
    store.down = False
    clock.now += 1
    assert lookup.get_blocking("globex").id == "globex"
    assert lookup.status()["available"] is True and lookup.last_error is None
    # the outage is logged once when it starts and once when it ends, not per lookup
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "routecar: tenant database unavailable: fake://tenants: connection refused",
        "routecar: tenant database fake://tenants is back after 1.0s"]


def test_probe_follows_the_database_without_traffic(lookup: TenantLookup, store: FakeStore,
                                                   clock: Clock) -> None:
    def settle() -> None:
        assert lookup._probe is not None
        lookup._probe.result(timeout=10)

    clock.now += 30
    store.down = True
    lookup.probe_soon()
    settle()
    assert lookup.status()["available"] is False
    lookup.probe_soon()  # not due again yet
    assert store.calls.count(("ping", "")) == 1
    store.down = False
    clock.now += 1
    lookup.probe_soon()
    settle()
    assert lookup.status()["available"] is True


def test_async_lookups_share_one_query_and_run_off_the_loop(lookup: TenantLookup, store: FakeStore) -> None:
    store.gate = threading.Event()

    async def main() -> list[Tenant | None]:
        tasks = [asyncio.ensure_future(lookup.get("acme")) for _ in range(20)]
        tick = 0
        for _ in range(50):  # the loop keeps running while the query is blocked in a thread
            await asyncio.sleep(0)
            tick += 1
        assert tick == 50 and not any(t.done() for t in tasks)
        store.gate.set()
        return await asyncio.gather(*tasks)

    found = asyncio.run(main())
    assert {t.id for t in found if t} == {"acme"} and len(found) == 20
    assert store.calls == [("id", "acme")]


def test_async_key_lookup_and_outage(lookup: TenantLookup, store: FakeStore) -> None:
    async def main() -> None:
        assert (await lookup.by_api_key("sk-acme")).id == "acme"
        store.down = True
        with pytest.raises(TenantSourceUnavailable):
            await lookup.get("globex")

    asyncio.run(main())


@pytest.mark.parametrize(("source", "expected"), [
    ("postgresql://u@127.0.0.1:5432/db?table=t", True),
    ("postgres://u@h/db", True),
    ("sqlite:///x.db?table=t&mode=lookup", True),
    ("sqlite:///x.db?table=t", False),
    ("sqlite:///x.db?table=t&mode=table", False),
    ("policies/tenants.yaml", False),
])
def test_lookup_mode(source: str, expected: bool) -> None:
    assert lookup_mode(source) is expected


def test_lookup_mode_rejects_unknown_mode() -> None:
    with pytest.raises(ConfigError, match="mode must be 'table'.*got 'lazy'"):
        lookup_mode("sqlite:///x.db?mode=lazy")


def test_open_tenants_file_source_takes_the_ttl(tmp_path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text("tenants:\n  - id: a\n")
    src = open_tenants(str(f), clock=lambda: 0.0, ttl_s=7)
    assert isinstance(src, TenantSource) and src.ttl_s == 7


def test_a_stale_key_miss_only_answers_beside_another_claim(lookup: TenantLookup, store: FakeStore,
                                                            clock: Clock) -> None:
    """identify_async must look every API key up (the methods must agree): while the database is
    down, a key seen as no tenant's within the grace period still counts as such beside another
    claim, so cached header tenants keep being served; alone it is still a 503 (never ungoverned)."""
    from routecar.tenants.identify import DEFAULT_ORDER
    from routecar.tenants.lookup import identify_async

    async def ident(headers: dict[str, str], keys: tuple[str, ...]):
        return await identify_async(DEFAULT_ORDER, headers=headers, proxy_user=None, body_user=None,
                                    api_keys=keys, lookup=lookup)

    async def main() -> None:
        assert (await ident({"x-tenant-id": "globex"}, ("sk-app-real-key",))).tenant.id == "globex"
        store.down = True
        clock.now += 31
        assert (await ident({"x-tenant-id": "globex"}, ("sk-app-real-key",))).tenant.id == "globex"
        for headers, keys in (({}, ("sk-app-real-key",)),                   # the key alone: no claim to lean on
                              ({"x-tenant-id": "globex"}, ("sk-never-seen",))):   # a key never seen
            with pytest.raises(TenantSourceUnavailable):
                await ident(headers, keys)
        clock.now += 300  # past ttl + grace: nothing stale is used
        with pytest.raises(TenantSourceUnavailable):
            await ident({"x-tenant-id": "globex"}, ("sk-app-real-key",))

    asyncio.run(main())
    with pytest.raises(TenantSourceUnavailable):  # the blocking path never serves a stale miss
        lookup.by_api_key_blocking("sk-app-real-key")
