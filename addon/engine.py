"""The routing engine: everything the addon does per request, minus mitmproxy and I/O.

    headers + body ──resolve──▶ Policy (request ∧ tenant, or default) or None (pass through)
    Policy + body  ──decide───▶ Decision (raises NoCandidate)
    entry + body   ──outbound─▶ (url, headers, body) with the operator's key, no app credentials

The addon (mitm/addon.py) translates flows into these calls; the dry-run
endpoints (`/x/...`) are answered here too, so they behave the same in every mode.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

from .apis import SHAPES, ApiName, Translation
from .apis.wire import model_list, protocol_headers, shape_profile, shaped_request
from .bodies import MAX_BODY, parse_body
from .catalog import Catalog, CatalogEntry
from .errors import (AdminTokenRequired, BadRequest, ConfigError, InvalidPolicy, MethodNotAllowed, NoCandidate,
                     RoutecarError, UnknownEndpoint, UnknownTenant)
from .governance import POLICY_HEADER, TENANT_HEADER, has_routing_header
from .health import HealthTracker
from .policy import Decision, Policy, PolicyCache, RequestProfile, evaluate
from .policy.hints import catalog_warnings
from .policy.ops import describe_fields
from .providers import FORWARD_HEADERS, Providers, missing_keys
from .reloading import ReloadingSource
from .tenants.identify import DEFAULT_ORDER, Identification, TenantIndex, identify
from .tenants.lookup import BlockingView, TenantLookup, identify_async
from .tenants.rules import RULE_ORIGIN, RuleSet, compile_policy, require_compiles
from .tenants.table import Tenant, TenantSource

CREDENTIAL_HEADERS = ("authorization", "api-key", "x-api-key")
ADMIN_HEADER = "x-routecar-token"


@dataclass(frozen=True)
class Resolved:
    policy: Policy
    tenant: str | None = None
    method: str | None = None      # how the tenant was identified
    tenant_policy: Policy | None = None
    request_policy: Policy | None = None


@dataclass(frozen=True)
class Outbound:
    url: str
    headers: dict[str, str]
    body: bytes
    api_out: ApiName = "chat"
    translation: Translation | None = None   # None: sent in the caller's own shape


def _bearer(value: str | None) -> str | None:
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return None


def client_api_keys(fields: Iterable[tuple[str, str]]) -> list[str]:
    """Every credential the app sent, in order: `Authorization: Bearer`, `api-key`, `x-api-key`,
    each as often as it was sent (a second header must not hide a tenant's key)."""
    keys: list[str] = []
    for name, value in fields:
        name = name.lower()
        key = _bearer(value) if name == "authorization" else value.strip() if name in CREDENTIAL_HEADERS else None
        if key and key not in keys:
            keys.append(key)
    return keys


def client_api_key(headers: Mapping[str, str]) -> str | None:
    keys = client_api_keys((h, headers[h]) for h in CREDENTIAL_HEADERS if h in headers)
    return keys[0] if keys else None


def check_request_origins(policy: Policy) -> None:
    """A request's clause may say where it comes from, but never that a tenant rule made it:
    traces and `/x/rank` would show the app's clause as the operator's."""
    bad = [{"path": f"rules[{c.index}].from",
            "message": f"'from' {c.from_!r} claims a tenant rule; {RULE_ORIGIN}... is reserved for "
                       "clauses compiled from the tenant table"}
           for c in policy.clauses if c.from_ and c.from_.strip().lower().startswith(RULE_ORIGIN)]
    if bad:
        raise InvalidPolicy(bad)


def check_catalog_providers(catalog: Catalog, providers: Providers) -> Catalog:
    missing = sorted({e.provider for e in catalog.entries} - set(providers.by_name))
    if missing:
        raise ConfigError(f"{catalog.source}: catalog uses provider(s) not in providers.yaml: {', '.join(missing)}")
    return catalog


@dataclass
class Engine:
    catalog_source: ReloadingSource[Catalog]
    providers: Providers
    env: Mapping[str, str]
    health: HealthTracker
    tenants: TenantSource | TenantLookup | None = None  # a lookup: tenants read from a database on demand
    rules: RuleSet | None = None
    identify_order: tuple[str, ...] = DEFAULT_ORDER  # every method; the sidecar's option leaves body_user out
    default_policy: str | None = None
    default_tenant: str | None = None
    max_body: int = MAX_BODY
    admin_token: str | None = None   # protects /x/rank for a named tenant and /x/healthz details
    _cache: PolicyCache | None = field(default=None, repr=False)
    _tenant_policies: LRUCache[Tenant, Policy] = field(default_factory=lambda: LRUCache(4096), repr=False)

    def __post_init__(self) -> None:
        if self.default_policy:  # a bad default fails at start, not on a request
            self.policies().parse(self.default_policy)
        if self.default_tenant and self.tenants and self._table().get(self.default_tenant) is None:
            raise ConfigError(f"default tenant {self.default_tenant!r} is not in {self.tenants.label}")
        if isinstance(self.tenants, TenantSource) and self.rules is not None:
            # A tenant whose attributes do not fit a rule fails the start, not its first
            # request; after a reload it keeps the last good table in service.
            tenants, rules = self.tenants, self.rules
            tenants.check = lambda table: require_compiles(table, rules, self.catalog.registry, tenants.label)
            tenants.check(tenants.current())

    @property
    def catalog(self) -> Catalog:
        return self.catalog_source.current()

    def policies(self) -> PolicyCache:
        """The policy cache for the current catalog's field registry (rebuilt if it changed)."""
        registry = self.catalog.registry
        if self._cache is None or (self._cache.registry is not registry
                                   and self._cache.registry.key != registry.key):
            self._cache = PolicyCache(registry)
            self._tenant_policies.clear()
        return self._cache

    # -- resolve ------------------------------------------------------------------------
    def tenant_policy(self, tenant: Tenant) -> Policy:
        if self.rules is None:
            raise ConfigError("tenants are configured but no rules file")
        cache = self.policies()
        # Keyed by the Tenant value (id, attributes, keys), not by the table version: the
        # table may reload between identifying this tenant and here, and a version key
        # would then pin the old tenant's policy under the new version.
        hit = self._tenant_policies.get(tenant)
        if hit is None:
            hit = self._tenant_policies[tenant] = cache._dedupe(compile_policy(tenant, self.rules, cache.registry))
        return hit

    def _table(self) -> TenantIndex:
        """The tenants to read from; a database is read through its cache, and may block
        (the addon awaits `resolve_async` / `dry_run_async` instead)."""
        assert self.tenants is not None
        return BlockingView(self.tenants) if isinstance(self.tenants, TenantLookup) else self.tenants.current()

    def find_tenant(self, headers: Mapping[str, str], body: Mapping[str, Any], proxy_user: str | None,
                    api_keys: Sequence[str] | None = None) -> tuple[Tenant | None, str | None]:
        if self.tenants is None:
            if headers.get(TENANT_HEADER):
                raise UnknownTenant(headers[TENANT_HEADER], "header (no tenant table is configured)")
            return None, None
        table = self._table()
        user = body.get("user")
        ident = identify(self.identify_order, headers=headers, proxy_user=proxy_user,
                         body_user=user if isinstance(user, str) else None,
                         api_keys=client_api_keys(headers.items()) if api_keys is None else api_keys, table=table)
        unclaimed = ident is None or ident.tenant is None
        return self._settle(ident, table.get(self.default_tenant) if self.default_tenant and unclaimed else None)

    async def _look_up_tenant(self, lookup: TenantLookup, headers: Mapping[str, str], body: Mapping[str, Any],
                              proxy_user: str | None, api_keys: Sequence[str] | None) -> tuple[Tenant | None, str | None]:
        """find_tenant for a database: every lookup runs off the event loop. A tenant that cannot
        be looked up raises TenantSourceUnavailable: never the default tenant, never ungoverned."""
        user = body.get("user")
        ident = await identify_async(self.identify_order, headers=headers, proxy_user=proxy_user,
                                     body_user=user if isinstance(user, str) else None,
                                     api_keys=client_api_keys(headers.items()) if api_keys is None else api_keys,
                                     lookup=lookup)
        unclaimed = ident is None or ident.tenant is None
        return self._settle(ident, await lookup.get(self.default_tenant) if self.default_tenant and unclaimed
                            else None)

    def _settle(self, ident: Identification | None, default: Tenant | None) -> tuple[Tenant | None, str | None]:
        """The identified tenant, else the default tenant (`default`: its row), else refuse or pass."""
        if ident is not None and ident.tenant is not None:
            return ident.tenant, ident.method
        if self.default_tenant:
            if default is None:  # dropped by a reload: refuse rather than pass the call through unrouted
                raise UnknownTenant(self.default_tenant, "default tenant (no longer in the table)")
            return default, "default"
        if ident is not None:
            raise UnknownTenant(ident.claimed_id, ident.method)
        return None, None

    async def resolve_async(self, headers: Mapping[str, str], body: Mapping[str, Any],
                            proxy_user: str | None = None, api_keys: Sequence[str] | None = None) -> Resolved | None:
        """`resolve` for the addon's async hooks: a tenant database is read off the event loop."""
        if not isinstance(self.tenants, TenantLookup):
            return self.resolve(headers, body, proxy_user, api_keys)
        found = await self._look_up_tenant(self.tenants, headers, body, proxy_user, api_keys)
        return self.resolve(headers, body, proxy_user, api_keys, found=found)

    def resolve(self, headers: Mapping[str, str], body: Mapping[str, Any], proxy_user: str | None = None,
                api_keys: Sequence[str] | None = None, *,
                found: tuple[Tenant | None, str | None] | None = None) -> Resolved | None:
        """The policy for this request, or None: it is not governed, pass it through untouched.

        `headers` must have lower-case names; `api_keys` every credential the app sent
        (default: from `headers`); `found`: the (tenant, method) already identified.
        Raises InvalidPolicy / UnknownTenant / TenantConflict / TenantSourceUnavailable,
        and BadRequest for a routing header that is there but says nothing.
        """
        cache = self.policies()
        raw = headers.get(POLICY_HEADER)
        req_pol = cache.parse(raw) if raw else None
        if req_pol is not None:
            check_request_origins(req_pol)
        tenant, method = found if found is not None else self.find_tenant(headers, body, proxy_user, api_keys)
        ten_pol = self.tenant_policy(tenant) if tenant else None
        policy = cache.conjunction(ten_pol, req_pol)
        if policy is None:
            if not self.default_policy:
                if has_routing_header(headers):
                    # A routing header makes the call governed; an empty one cannot route it.
                    raise BadRequest("X-Route-Policy / X-Tenant-Id is empty and nothing else identifies "
                                     "a tenant or a policy: send a value or leave the header out")
                return None
            policy = cache.parse(self.default_policy)
        return Resolved(policy, tenant.id if tenant else None, method, ten_pol, req_pol)

    # -- decide -------------------------------------------------------------------------
    def decide(self, policy: Policy, body: Mapping[str, Any], tenant: str | None = None, api: ApiName = "chat") -> Decision:
        profile = shape_profile(api, body, {name: p.spec.apis for name, p in self.providers.by_name.items()})
        decision = evaluate(policy, self.catalog, profile, self.health)
        if not decision.order:
            raise NoCandidate(decision.dropped(), fingerprint=policy.fingerprint, tenant=tenant)
        return decision

    def outbound(self, entry: CatalogEntry, body: Mapping[str, Any],
                 client_headers: Mapping[str, str], api_in: ApiName = "chat") -> Outbound:
        """`entry`'s request: its URL, the operator's key, its model; in `api_in` or translated."""
        provider = self.providers.get(entry.provider)
        if provider is None:
            raise ConfigError(f"catalog entry {entry.id} names unknown provider {entry.provider!r}")
        key = provider.key(self.env)
        # An allowlist, by lower-case name: what is not on it (credentials, cookies, gateway
        # keys, unknown headers) never leaves, whatever its spelling.
        headers = {k.lower(): v for k, v in client_headers.items() if k.lower() in FORWARD_HEADERS}
        headers["content-type"] = "application/json"
        api_out, payload, tr = shaped_request(api_in, provider.spec.apis, body, entry.model, entry.id)
        headers = protocol_headers(headers, api_out, SHAPES[api_out].default_headers)
        headers.update(provider.auth_headers(key))
        return Outbound(provider.url(api_out), headers, json.dumps(payload).encode(), api_out, tr)

    def operator_keys(self) -> tuple[str, ...]:
        """The operator's provider keys set in this environment: what must never reach the app."""
        keys = (self.env.get(p.spec.key_env, "") for p in self.providers.by_name.values())
        return tuple(dict.fromkeys(k for k in keys if k))

    def models(self, policy: Policy, anthropic: bool = False) -> dict[str, Any]:
        """`GET …/models` for a governed caller: the catalog entries `policy` allows, ranked."""
        return model_list(evaluate(policy, self.catalog, RequestProfile(), None).entries, anthropic)

    # -- dry-run endpoints ----------------------------------------------------------------
    def is_admin(self, headers: Mapping[str, str]) -> bool:
        """True without `admin_token`; else the request must carry it (`Authorization: Bearer` or
        `X-Routecar-Token`), compared in constant time."""
        if not self.admin_token:
            return True
        given = headers.get(ADMIN_HEADER) or _bearer(headers.get("authorization"))
        return given is not None and hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                                         self.admin_token.encode("utf-8"))

    def dry_run(self, method: str, path: str, raw: bytes | None,
                extra_health: Callable[[], Mapping[str, Any]] | None = None,
                headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """Answer `/x/...`: (status, JSON body). Never calls a provider.

        With an `admin_token`, `/x/healthz` shows only its status and `/x/rank` for a named
        tenant is refused unless `headers` (lower-case names) carry the token."""
        route = path.split("?", 1)[0].rstrip("/")
        admin = self.is_admin(headers or {})
        try:
            if route == "/x/fields" and method == "GET":
                return 200, {"fields": describe_fields(self.catalog.registry)}
            if route == "/x/catalog" and method == "GET":
                cat = self.catalog
                return 200, {"version": cat.version, "source": cat.source, "entries": cat.to_list(),
                             "last_error": self.catalog_source.last_error}
            if route == "/x/healthz" and method == "GET":
                health = self.healthz(extra_health() if extra_health else {})
                return 200, health if admin else {"status": health["status"]}
            if route == "/x/rank" and method == "POST":
                payload = parse_body(raw, self.max_body)
                if payload.get("tenant") is not None and not admin:
                    raise AdminTokenRequired("ranking for a named tenant needs the operator token "
                                             "(Authorization: Bearer <token> or X-Routecar-Token)")
                return 200, self.rank(payload)
            if route in ("/x/fields", "/x/catalog", "/x/healthz", "/x/rank"):
                raise MethodNotAllowed(f"{method} not allowed on {route}")
            raise UnknownEndpoint(f"unknown endpoint {route}: try /x/fields, /x/rank, /x/catalog, /x/healthz")
        except RoutecarError as e:
            return e.status, e.to_openai()

    async def dry_run_async(self, method: str, path: str, raw: bytes | None,
                            extra_health: Callable[[], Mapping[str, Any]] | None = None,
                            headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """`dry_run` for the addon's async hooks: the tenant a `POST /x/rank` names is looked up
        off the event loop first, so the ranking finds it in the cache (and a database that is
        down answers at once: lookups fail fast during an outage)."""
        if (isinstance(self.tenants, TenantLookup) and method == "POST" and self.is_admin(headers or {})
                and path.split("?", 1)[0].rstrip("/") == "/x/rank"):
            try:
                tenant = parse_body(raw, self.max_body).get("tenant")
                if tenant is not None:
                    await self.tenants.get(str(tenant))
            except RoutecarError:
                pass  # dry_run answers the same error
        return self.dry_run(method, path, raw, extra_health, headers)

    def rank_decision(self, payload: Mapping[str, Any]) -> Decision:
        """The decision `POST /x/rank` and `routecar rank` show: {"policy", "request", "tenant"}."""
        cache = self.policies()
        req_body = payload.get("request") or {"messages": [{"role": "user", "content": "hello"}]}
        if not isinstance(req_body, Mapping):
            raise BadRequest("'request' must be a chat completion request object")
        pol_src = payload.get("policy")
        req_pol = None
        if pol_src is not None:
            req_pol = cache.parse(pol_src if isinstance(pol_src, (Mapping, str)) else json.dumps(pol_src))
            check_request_origins(req_pol)
        tenant_id = payload.get("tenant")
        ten_pol = None
        if tenant_id is not None:
            tenant = self._table().get(str(tenant_id)) if self.tenants else None
            if tenant is None:
                raise UnknownTenant(str(tenant_id), "rank request")
            ten_pol = self.tenant_policy(tenant)
        policy = cache.conjunction(ten_pol, req_pol)
        if policy is None:
            raise InvalidPolicy([{"path": "$", "message": "give 'policy' and/or 'tenant'"}])
        return evaluate(policy, self.catalog, RequestProfile.from_body(req_body), self.health)

    def rank(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        decision = self.rank_decision(payload)
        out = decision.to_dict()
        out["tenant"] = payload.get("tenant")
        out["warnings"] = [w.to_dict() for w in catalog_warnings(decision.policy, decision.catalog)]
        return out

    def healthz(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        cat = self.catalog
        body: dict[str, Any] = {
            "status": "ok",
            "catalog": {"version": cat.version, "entries": len(cat.entries), "source": cat.source,
                        "last_error": self.catalog_source.last_error},
            "health": self.health.snapshot(),
        }
        if isinstance(self.tenants, TenantLookup):
            self.tenants.probe_soon()  # in the background: healthz follows an outage without traffic
            body["tenants"] = self.tenants.status()
        elif self.tenants is not None:
            table = self.tenants.current()
            body["tenants"] = {"source": self.tenants.label, "version": table.version,
                               "count": len(table.ids()), "last_error": self.tenants.last_error}
        missing = missing_keys(self.providers, cat.providers(), self.env)
        body["missing_keys"] = [{"provider": m.provider, "env_var": m.env_var} for m in missing]
        body.update(extra)
        if self.catalog_source.last_error or (self.tenants and self.tenants.last_error) or missing:
            body["status"] = "degraded"
        return body
