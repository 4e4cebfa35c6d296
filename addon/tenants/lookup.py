"""Tenants looked up on demand in a database, cached (`--tenants postgresql://…`).

    lookup = TenantLookup(store, clock=time.monotonic, ttl_s=30, grace_s=300)
    await lookup.get("acme")                  # off the event loop (a thread pool), cached
    await lookup.by_api_key("sk-...")         # API-key identification (by its sha256)
    await identify_async(order, ..., lookup=lookup)   # `identify`, for the addon
    lookup.get_blocking("acme")               # the CLI (and BlockingView, a table for sync code)

The cache holds found tenants and misses, each bounded by `max_entries`
(least recently used first out), so memory grows with the tenants in use,
not with the table. An entry is fresh for `ttl_s`: a change in the database
is in effect within `ttl_s`. When the database cannot answer:

    entry fresh                          served, no query
    tenant found, stale < grace_s        served (healthz degraded)
    key miss, stale < grace_s, checked   "not a tenant key", only when another method already
      against another claim              claims a tenant (identify_async: the methods must agree)
    miss, error, or nothing cached       TenantSourceUnavailable, 503: a request is never
                                         routed as another tenant nor passed through ungoverned

While it is down, at most one query per `retry_s` tries the database (other
lookups fail fast); the first success ends the outage, without a restart.
Concurrent lookups of one key share one query.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache

from ..errors import ConfigError, TenantSourceUnavailable
from ..fields import FieldRegistry
from .identify import Identification, agree, claims
from .rules import RuleSet, compile_policy
from .store import SqliteStore, TenantStore
from .table import Tenant, TenantSource, hash_api_key, parse_source

log = logging.getLogger("routecar")
Key = tuple[str, str]  # ("id", tenant id) or ("key", sha256 hex)
DEFAULT_TTL_S = 30.0
DEFAULT_GRACE_S = 300.0


@dataclass(frozen=True)
class _Hit:
    tenant: Tenant | None        # None: no such tenant (a miss)
    error: ConfigError | None    # a row that does not parse, served like a miss
    fetched: float


class TenantLookup:
    """A tenant store behind a bounded TTL cache with an outage grace period."""

    def __init__(self, store: TenantStore, *, clock: Callable[[], float], ttl_s: float = 30.0,
                 grace_s: float = 300.0, max_entries: int = 10_000, retry_s: float = 1.0,
                 workers: int = 4) -> None:
        self.store, self.clock = store, clock
        self.label = store.label
        self.ttl_s, self.grace_s, self.retry_s = ttl_s, grace_s, retry_s
        # Found tenants outlive their ttl by the grace period (served only while the
        # database is down); so do misses, but a stale miss only ever answers "this key is
        # no tenant's" beside another claim (never a pass-through); bad rows never outlive it.
        self._found: TTLCache[Key, _Hit] = TTLCache(max_entries, ttl_s + grace_s, timer=clock)
        self._missing: TTLCache[Key, _Hit] = TTLCache(max_entries, ttl_s + grace_s, timer=clock)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="routecar-tenants")
        self._inflight: dict[Key, asyncio.Future[Tenant | None]] = {}
        self.last_error: str | None = None
        self.down_since: float | None = None
        self._last_try = float("-inf")
        self._probe: Future[None] | None = None
        self.lookups = self.queries = 0

    # -- the cache --------------------------------------------------------------------------
    def _cached(self, key: Key, *, stale: bool = False) -> _Hit | None:
        with self._lock:
            hit = self._found.get(key) or self._missing.get(key)
        if hit is None or (not stale and self.clock() - hit.fetched >= self.ttl_s):
            return None
        return hit

    @staticmethod
    def _answer(hit: _Hit) -> Tenant | None:
        if hit.error is not None:
            raise hit.error
        return hit.tenant

    def _fetch(self, key: Key, stale_miss: bool = False) -> Tenant | None:
        """Query the store (blocking), fill the cache; on an outage, the stale hit or a 503."""
        now = self.clock()
        with self._lock:
            fail_fast = self.down_since is not None and now - self._last_try < self.retry_s
            if not fail_fast:
                self._last_try = now
        if fail_fast:
            return self._during_outage(key, stale_miss)
        kind, value = key
        try:
            self.queries += 1
            tenant = self.store.by_id(value) if kind == "id" else self.store.by_key_hash(value)
            hit = _Hit(tenant, None, now)
        except TenantSourceUnavailable as e:
            self._went_down(now, e.message)
            return self._during_outage(key, stale_miss)
        except ConfigError as e:  # a bad row: refused; the app is told what is wrong, not where the database is
            hit = _Hit(None, ConfigError(e.message.removeprefix(f"{self.label}: "), tenant=e.tenant), now)
        with self._lock:  # one entry per key: the newest answer
            keep, drop = (self._found, self._missing) if hit.tenant is not None else (self._missing, self._found)
            keep[key] = hit
            drop.pop(key, None)
        self._came_back()
        return self._answer(hit)

    def _during_outage(self, key: Key, stale_miss: bool = False) -> Tenant | None:
        hit = self._cached(key, stale=True)
        if hit is not None and (hit.tenant is not None or (stale_miss and hit.error is None)):
            return hit.tenant  # within ttl + grace (older entries have left the TTLCache)
        who = f"tenant {key[1]!r}" if key[0] == "id" else "the tenant of this API key"
        raise TenantSourceUnavailable(f"{who} cannot be looked up: the tenant database is unavailable",
                                      tenant=key[1] if key[0] == "id" else None)

    def _went_down(self, now: float, reason: str) -> None:
        with self._lock:
            first = self.down_since is None
            if first:
                self.down_since = now
            self.last_error = f"tenant database unavailable: {reason}"
        if first:  # once per outage, not per lookup
            log.warning("routecar: %s; serving cached tenants for up to %gs past their ttl, "
                        "refusing the others (503 tenant_source_unavailable)", self.last_error, self.grace_s)

    def _came_back(self) -> None:
        with self._lock:
            since, self.down_since, self.last_error = self.down_since, None, None
        if since is not None:
            log.warning("routecar: tenant database %s is back after %.1fs", self.label, self.clock() - since)

    # -- lookups ----------------------------------------------------------------------------
    def lookup_blocking(self, key: Key) -> Tenant | None:
        self.lookups += 1
        hit = self._cached(key)
        return self._answer(hit) if hit is not None else self._fetch(key)

    def get_blocking(self, tenant_id: str) -> Tenant | None:
        return self.lookup_blocking(("id", tenant_id))

    def by_api_key_blocking(self, raw_key: str) -> Tenant | None:
        return self.lookup_blocking(("key", hash_api_key(raw_key)))

    async def lookup(self, key: Key, *, stale_miss: bool = False) -> Tenant | None:
        """The tenant for `key`: from the cache, else from the store in a worker thread.
        `stale_miss`: during an outage, a miss within the grace period answers None."""
        self.lookups += 1
        hit = self._cached(key)
        if hit is not None:
            return self._answer(hit)
        loop = asyncio.get_running_loop()
        fut = self._inflight.get(key)
        if fut is None or fut.get_loop() is not loop:
            fut = self._inflight[key] = loop.run_in_executor(self._pool, self._fetch, key, stale_miss)
            fut.add_done_callback(lambda f: self._inflight.pop(key, None) if self._inflight.get(key) is f else None)
        # shield: a client that goes away must not cancel the query others are waiting for.
        return await asyncio.shield(fut)

    async def get(self, tenant_id: str) -> Tenant | None:
        return await self.lookup(("id", tenant_id))

    async def by_api_key(self, raw_key: str, *, stale_miss: bool = False) -> Tenant | None:
        return await self.lookup(("key", hash_api_key(raw_key)), stale_miss=stale_miss)

    # -- health -----------------------------------------------------------------------------
    def probe_soon(self) -> None:
        """Check the database in the background, at most every `retry_s` while it is down and
        every `ttl_s` otherwise, so /x/healthz follows an outage and its end without traffic."""
        now = self.clock()
        due = self.retry_s if self.down_since is not None else self.ttl_s
        with self._lock:
            if (self._probe is not None and not self._probe.done()) or now - self._last_try < due:
                return
            self._last_try = now
            self._probe = self._pool.submit(self._ping, now)

    def _ping(self, now: float) -> None:
        try:
            self.store.ping()
        except TenantSourceUnavailable as e:
            self._went_down(now, e.message)
        else:
            self._came_back()

    def status(self) -> dict[str, Any]:
        down = self.down_since
        with self._lock:
            found, missing = len(self._found), len(self._missing)
        return {"source": self.label, "mode": "lookup", "ttl_s": self.ttl_s, "grace_s": self.grace_s,
                "cached": found, "cached_misses": missing, "lookups": self.lookups, "queries": self.queries,
                "available": down is None,
                "down_for_s": round(self.clock() - down, 3) if down is not None else None,
                "last_error": self.last_error}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.store.close()


async def identify_async(order: Sequence[str], *, headers: Mapping[str, str], proxy_user: str | None,
                         body_user: str | None, api_keys: Sequence[str],
                         lookup: TenantLookup) -> Identification | None:
    """`identify`, with the database read off the event loop: every API key is looked up (its
    tenant must agree with the other claims), a claimed id only once the claims agree. Beside
    another claim, a key seen as no tenant's within the grace period still counts as such
    while the database is down (the call stays governed by that claim either way)."""
    found: list[Identification] = []
    said = list(claims(order, headers=headers, proxy_user=proxy_user, body_user=body_user, api_keys=api_keys))
    other_claim = any(method != "api_key" for method, _ in said)
    for method, claim in said:
        if method != "api_key":
            found.append(Identification(None, claim, method))
        elif (tenant := await lookup.by_api_key(claim, stale_miss=other_claim)) is not None:
            found.append(Identification(tenant, tenant.id, method))
    first = agree(found)
    if first is not None and first.tenant is None:
        first = Identification(await lookup.get(first.claimed_id or ""), first.claimed_id, first.method)
    return first


class BlockingView:
    """A TenantLookup seen as a table (`get`, `by_api_key`) by synchronous code: the CLI, and
    `/x/rank` once the addon has looked its tenant up (`Engine.dry_run_async`)."""

    def __init__(self, lookup: TenantLookup) -> None:
        self.lookup = lookup

    def get(self, tenant_id: str) -> Tenant | None:
        return self.lookup.get_blocking(tenant_id)

    def by_api_key(self, raw_key: str) -> Tenant | None:
        return self.lookup.by_api_key_blocking(raw_key)


@dataclass(frozen=True)
class StoreCheck:
    """What `routecar check` found in a tenant database (`check_store`)."""

    tenants: int                 # rows read
    failures: int                # rows that do not parse or whose policy does not compile
    problems: tuple[str, ...]    # the first failures, duplicate ids/keys (each fails the check)
    notes: tuple[str, ...]       # missing indexes (slow, not wrong)


def check_store(store: TenantStore, rules: RuleSet, registry: FieldRegistry | None, *,
                shown: int = 20) -> StoreCheck:
    """Read every row through `store.scan()` (bounded memory: one row at a time, no table kept)
    and compile each tenant's policy; keep the first `shown` failures."""
    count = failures = 0
    problems: list[str] = []
    for row in store.scan():
        count += 1
        error = row if isinstance(row, ConfigError) else None
        if error is None:
            try:
                compile_policy(row, rules, registry)
            except ConfigError as e:
                error = e
        if error is not None:
            failures += 1
            if len(problems) < shown:
                problems.append(error.message)
    dups = store.duplicates()
    return StoreCheck(count, failures + len(dups), tuple(problems + dups), tuple(store.unindexed()))


def lookup_mode(source: str) -> bool:
    """True for a source looked up on demand: PostgreSQL, or SQLite with `mode=lookup`."""
    if source.startswith(("postgresql://", "postgres://")):
        return True
    if not source.startswith("sqlite://"):
        return False
    modes = urllib.parse.parse_qs(source.partition("?")[2]).get("mode") or ["table"]
    if modes[-1] not in ("table", "lookup"):
        raise ConfigError(f"{source}: mode must be 'table' (load the whole table) or 'lookup' "
                          f"(one row at a time), got {modes[-1]!r}")
    return modes[-1] == "lookup"


def open_tenants(source: str, *, clock: Callable[[], float], ttl_s: float | None = None,
                 grace_s: float | None = None, background: bool = False) -> TenantSource | TenantLookup:
    """The tenant source named by `source` (docs/tenants.md): a table held in memory and
    reloaded when it changes (YAML, CSV, SQLite), or a database looked up on demand.
    `ttl_s`: how long a looked-up tenant is cached, or how often a file is checked."""
    if not lookup_mode(source):
        return TenantSource(source, clock=clock, background=background,
                            **({"ttl_s": ttl_s} if ttl_s is not None else {}))
    if source.startswith("sqlite://"):
        store: TenantStore = SqliteStore(parse_source(source))
    else:
        from .postgres import PostgresStore  # psycopg is imported only by a sidecar that uses it
        store = PostgresStore(source)
    return TenantLookup(store, clock=clock, ttl_s=DEFAULT_TTL_S if ttl_s is None else ttl_s,
                        grace_s=DEFAULT_GRACE_S if grace_s is None else grace_s)
