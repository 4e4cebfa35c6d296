"""Cost truth and fleet telemetry for the sidecar: price each governed call, then tell the observers.

    Telemetry(pricer, metrics=, spans=, access=)
      .cost(entry, usage)       -> Cost | None   genai-prices, else the entry's catalog price
      .observe(outcome)         metrics, span, access line; an observer that fails is logged, never raised
      .metrics_exposition()     -> (status, body, content type) for `GET /metrics`
      .close()                  flush spans
    sidecar_state(engine, traces_stats)  what the scrape-time gauges read
    key_warning(missing)        the startup line naming unset key variables

The addon calls `cost` and `observe` once per call, where the trace record is
finalised (mitm/router.py `_finish`); everything here is plain Python.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .accesslog import AccessLog
from .catalog import CatalogEntry
from .engine import Engine
from .metrics import Metrics, SidecarState
from .outcome import CallOutcome
from .policy import Decision
from .pricing import Cost, Pricer
from .providers import MissingKey, missing_keys
from .otelenv import otlp_endpoint
from .tenants.lookup import TenantLookup
from .usage import TokenUsage

if TYPE_CHECKING:
    from .spans import Spans

log = logging.getLogger("routecar")


@dataclass(frozen=True)
class TelemetryConfig:
    """The telemetry options, parsed (see mitm/options.py)."""

    metrics: bool = True
    metrics_tenant_label: bool = False
    otlp_endpoint: str = ""           # empty: OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, else off
    access_log: bool = True


Observer = Callable[[CallOutcome], None]


class Telemetry:
    def __init__(self, pricer: Pricer, *, metrics: Metrics | None = None, spans: Spans | None = None,
                 access: AccessLog | None = None) -> None:
        self.pricer = pricer
        self.metrics, self.spans, self.access = metrics, spans, access
        self.observers: list[tuple[str, Observer]] = [
            (name, obs.observe) for name, obs in (("metrics", metrics), ("spans", spans), ("access log", access))
            if obs is not None]
        self._failed: set[str] = set()

    @classmethod
    def build(cls, config: TelemetryConfig, env: Mapping[str, str],
              state: Callable[[], SidecarState] | None = None, pricer: Pricer | None = None) -> Telemetry:
        endpoint = otlp_endpoint(config.otlp_endpoint, env)
        spans = None
        if endpoint:
            from .spans import Spans   # the OpenTelemetry SDK is loaded only by a sidecar that sends spans
            spans = Spans(endpoint, env=env)
        return cls(pricer or Pricer(),
                   metrics=Metrics(tenant_label=config.metrics_tenant_label, state=state) if config.metrics else None,
                   spans=spans,
                   access=AccessLog() if config.access_log else None)

    def cost(self, entry: CatalogEntry | None, usage: TokenUsage | None) -> Cost | None:
        if entry is None or usage is None:
            return None
        return self.pricer.cost(entry.provider, entry.model, usage, (entry.price_in, entry.price_out))

    def observe(self, outcome: CallOutcome) -> None:
        for name, observe in self.observers:
            try:
                observe(outcome)
            except Exception:  # noqa: BLE001 - telemetry must never fail a call
                if name not in self._failed:   # once per observer, not once per request
                    self._failed.add(name)
                    log.exception("routecar: %s failed for %s (the call itself is unaffected)",
                                  name, outcome.trace_id)

    def metrics_exposition(self, accept: str = "") -> tuple[int, bytes, str]:
        if self.metrics is None:
            return 404, b"metrics are off (routecar_metrics=false)\n", "text/plain; charset=utf-8"
        body, content_type = self.metrics.exposition(accept)
        return 200, body, content_type

    def close(self) -> None:
        if self.spans is not None:
            self.spans.close()


def est_cost_of(decision: Decision | None, entry_id: str | None) -> float | None:
    """The decision's estimated cost for the entry that answered."""
    if decision is None or entry_id is None:
        return None
    entries = decision.catalog.entries
    return next((c for i, c in zip(decision.order, decision.costs) if entries[i].id == entry_id), None)


def sidecar_state(engine: Engine | None, traces_stats: Mapping[str, Any] | None) -> SidecarState:
    if engine is None:
        return SidecarState(traces=traces_stats)
    catalog = engine.catalog
    providers = catalog.providers()
    reloads = {"catalog": (engine.catalog_source.reloads, engine.catalog_source.last_error)}
    database_up = None
    if isinstance(engine.tenants, TenantLookup):   # a database looked up on demand: up or down
        database_up = engine.tenants.status()["available"]
    elif engine.tenants is not None:               # a file reloaded when it changes
        reloads["tenants"] = (engine.tenants.reloads, engine.tenants.last_error)
    return SidecarState(
        traces=traces_stats, health=engine.health.snapshot(),
        entry_providers={e.id: e.provider for e in catalog.entries}, reloads=reloads,
        missing_keys=missing_keys(engine.providers, providers, engine.env), providers=providers,
        key_envs={p: engine.providers.by_name[p].spec.key_env for p in providers if p in engine.providers.by_name},
        catalog_version=catalog.version, tenant_database_up=database_up)


def key_warning(missing: Sequence[MissingKey]) -> str | None:
    """One loud line naming every unset key variable (None when every key is there)."""
    if not missing:
        return None
    names = ", ".join(f"{m.env_var} ({m.provider})" for m in missing)
    return (f"routecar: provider key(s) not set: {names}; calls routed to those providers fail over "
            f"to others or answer 500 provider_key_missing (see GET /x/healthz)")
