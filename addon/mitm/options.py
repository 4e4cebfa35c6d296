"""routecar's mitmproxy options: declared with their help texts, and read once at configure.

`read_settings(options)` turns them into the engine, the classifier and the timeouts, or
raises (`RoutecarError`, `OSError`): a bad configuration fails at start, not on a request.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from ..catalog import DEFAULT_CATALOG, load_catalog
from ..engine import Engine, check_catalog_providers
from ..errors import ConfigError
from ..governance import DEFAULT_BASE_PATHS, Governance
from ..health import HealthTracker
from ..providers import DEFAULT_PROVIDERS, load_providers
from ..reloading import ReloadingSource
from ..tenants.identify import validate_order
from ..tenants.lookup import TenantLookup, open_tenants
from ..tenants.rules import load_rules
from ..traces.store import parse_since
from ..upstream import Timeouts

DEFAULT_RULES = DEFAULT_PROVIDERS.parent / "rules.yaml"


def add_options(loader: Any) -> None:
        loader.add_option("routecar_catalog", str, str(DEFAULT_CATALOG),
                          "Catalog file (YAML/JSON) or http(s) URL; reloaded when it changes.")
        loader.add_option("routecar_catalog_ttl", str, "60",
                          "Seconds between two fetches of a catalog given as an http(s) URL (files are "
                          "checked every 2 s).")
        loader.add_option("routecar_providers", str, str(DEFAULT_PROVIDERS),
                          "providers.yaml: base URL, auth style and key variable per provider.")
        loader.add_option("routecar_tenants", str, "",
                          "Tenant table: tenants.yaml, a .csv file or sqlite:///file.db?table=tenants "
                          "(held in memory), or looked up on demand: postgresql://USER@HOST:PORT/DB?table=tenants "
                          "or sqlite:///file.db?table=tenants&mode=lookup. Empty: tenants are not used.")
        loader.add_option("routecar_tenant_ttl", str, "",
                          "Seconds a tenant looked up in a database stays cached (a change is in effect "
                          "within it; default 30), or between checks of a tenant file (default 2).")
        loader.add_option("routecar_tenant_grace", str, "300",
                          "Seconds a cached tenant is still served past its ttl while the tenant database "
                          "is down (0: none). Other tenants get 503 tenant_source_unavailable meanwhile.")
        loader.add_option("routecar_rules", str, str(DEFAULT_RULES),
                          "rules.yaml compiling tenant attributes into policy clauses.")
        loader.add_option("routecar_identify", str, "header,api_key,proxy_auth",
                          "Tenant identification methods, in order (also: body_user, the body's `user` field).")
        loader.add_option("routecar_default_tenant", str, "",
                          "Tenant used when a request names none (or an unknown one).")
        loader.add_option("routecar_default_policy", str, "",
                          "policy_ir JSON (or @file) applied to LLM calls with no policy and no tenant.")
        loader.add_option("routecar_traces", str, "",
                          "Trace database path (default: $ROUTECAR_HOME/traces.db); 'off' disables traces.")
        loader.add_option("routecar_traces_max_age", str, "",
                          "Prune traces older than this (e.g. 7d, 12h). Empty: keep.")
        loader.add_option("routecar_traces_max_rows", int, 0,
                          "Keep at most this many traces (0: no limit).")
        loader.add_option("routecar_traces_writer", str, "thread",
                          "Where trace rows are built and written: 'thread' (a thread of the proxy) or "
                          "'process' (a child process: same CPU in total, ~75 MB more memory, but the "
                          "proxy's event loop keeps its core when a second one is free).")
        # Seconds as strings: mitmproxy's --set cannot parse float options.
        loader.add_option("routecar_connect_timeout", str, "5", "Seconds to connect to a provider.")
        loader.add_option("routecar_first_byte_timeout", str, "60",
                          "Seconds from a ready connection to a provider's response headers "
                          "(for a stream: its first event). Keep it generous: a non-streaming "
                          "answer's headers come only once the whole answer is generated.")
        loader.add_option("routecar_deadline", str, "120",
                          "Seconds for all attempts of one request together.")
        loader.add_option("routecar_max_body", int, 8 * 1024 * 1024,
                          "Largest request body routed (bytes), also once its Content-Encoding is undone.")
        loader.add_option("routecar_drain_timeout", str, "30",
                          "Seconds in-flight calls may take to finish on shutdown (SIGTERM); calls still "
                          "running then end with 503 / an SSE error event 'shutting_down'. 0: end them at once.")
        loader.add_option("routecar_intercept_only_providers", bool, True,
                          "In regular mode, decrypt TLS only for provider hosts (sets allow_hosts).")
        loader.add_option("routecar_passthrough", str, "",
                          "Comma-separated path prefixes (e.g. /v1/files,/v1/batches) whose governed calls "
                          "are forwarded unchanged, minus the routing headers, and traced as passthrough. "
                          "Other governed calls routecar does not route are refused (unsupported_endpoint).")
        loader.add_option("routecar_admin_token", str, "",
                          "Operator token (or @file holding it) required by /x/rank for a named tenant and "
                          "by /x/healthz details: `Authorization: Bearer TOKEN` or `X-Routecar-Token: TOKEN`.")



@dataclass(frozen=True)
class Settings:
    engine: Engine
    governance: Governance
    timeouts: Timeouts
    traces_max_age: float | None
    drain_timeout: float


def read_settings(o: Any, previous: Engine | None = None) -> Settings:
    """The settings `o` (ctx.options) asks for. `previous` is the engine in service: a tenant
    database pool opened here is closed again when anything else is wrong, never its pool."""
    tenants = None
    try:
        providers = load_providers(o.routecar_providers)
        # background=True: checks and reloads run in a thread, never in a hook.
        catalog_src = ReloadingSource(
            o.routecar_catalog, lambda s: check_catalog_providers(load_catalog(s), providers), time.monotonic,
            url_ttl_s=_seconds("routecar_catalog_ttl", o.routecar_catalog_ttl), background=True)
        rules = None
        if o.routecar_tenants:
            tenants = open_tenants(
                o.routecar_tenants, clock=time.monotonic, background=True,
                ttl_s=_seconds("routecar_tenant_ttl", o.routecar_tenant_ttl) if o.routecar_tenant_ttl else None,
                grace_s=_seconds("routecar_tenant_grace", o.routecar_tenant_grace, zero=True))
            rules = load_rules(o.routecar_rules)
        default_policy = _value_or_file(o.routecar_default_policy)
        admin_token = _value_or_file(o.routecar_admin_token).strip()
        engine = Engine(
            catalog_src, providers, os.environ, HealthTracker(time.monotonic),
            tenants=tenants, rules=rules,
            identify_order=validate_order([m.strip() for m in o.routecar_identify.split(",") if m.strip()]),
            default_policy=default_policy or None, default_tenant=o.routecar_default_tenant or None,
            max_body=o.routecar_max_body, admin_token=admin_token or None,
        )
        governance = Governance(
            providers.intercept_hosts, providers.base_paths | DEFAULT_BASE_PATHS,
            tuple(p.strip() for p in o.routecar_passthrough.split(",") if p.strip()))
        first_byte = _seconds("routecar_first_byte_timeout", o.routecar_first_byte_timeout)
        timeouts = Timeouts(_seconds("routecar_connect_timeout", o.routecar_connect_timeout),
                            first_byte, max(first_byte, 120.0), _seconds("routecar_deadline", o.routecar_deadline))
        if o.routecar_traces_writer not in ("process", "thread"):
            raise ConfigError(f"routecar_traces_writer must be 'process' or 'thread', "
                              f"got {o.routecar_traces_writer!r}")
        try:
            traces_max_age = parse_since(o.routecar_traces_max_age) if o.routecar_traces_max_age else None
        except ValueError as e:
            raise ConfigError(f"routecar_traces_max_age: {e}") from None
        drain_timeout = _seconds("routecar_drain_timeout", o.routecar_drain_timeout, zero=True)
        return Settings(engine, governance, timeouts, traces_max_age, drain_timeout)
    except BaseException:
        close_lookup(tenants, previous)
        raise


def close_lookup(tenants: object, engine: Engine | None) -> None:
    """Close a tenant database's pool unless `engine` (the one in service) still uses it."""
    if isinstance(tenants, TenantLookup) and (engine is None or engine.tenants is not tenants):
        tenants.close()


def _seconds(option: str, value: str, *, zero: bool = False) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{option} must be a number of seconds, got {value!r}") from None
    if not (0 <= seconds if zero else 0 < seconds) or seconds == float("inf"):
        raise ConfigError(f"{option} must be a {'non-negative' if zero else 'positive'} number of seconds, "
                          f"got {value!r}")
    return seconds


def _value_or_file(value: str) -> str:
    """An option's value, or the content of the file it names as `@path`."""
    if value.startswith("@"):
        with open(value[1:], encoding="utf-8") as f:
            return f.read()
    return value


