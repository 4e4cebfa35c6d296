"""Prometheus metrics of one sidecar, served at `GET /metrics`.

    Metrics(tenant_label=False, state=None)   one CollectorRegistry per instance (no global state)
      .observe(outcome)                        per governed call: counters and histograms
      .exposition(accept) -> (bytes, type)     the text (or OpenMetrics) format Prometheus scrapes

Per call (labels from the catalog, so their number is bounded by it):

    routecar_calls_total{provider,model,outcome,api[,tenant]}
    routecar_fallbacks_total{provider,model,api[,tenant]}     answered after a failed attempt
    routecar_attempts_total{provider,model,error_class}        every upstream attempt
    routecar_request_duration_seconds{provider,model,api}      histogram, whole call
    routecar_time_to_first_byte_seconds{provider,model,api}    histogram
    routecar_cost_usd_total{provider,model,source[,tenant]}    actual cost (source: genai-prices|catalog)
    routecar_tokens_total{provider,model,kind[,tenant]}        kind: input, cached_input, output, reasoning

Read when scraped (`state()`, nothing per call):

    routecar_trace_queue_depth, routecar_traces_written_total, routecar_traces_dropped_total,
    routecar_trace_write_errors_total, routecar_entry_healthy{entry,provider},
    routecar_entry_error_rate{entry,provider}, routecar_config_reloads_total{source},
    routecar_config_reload_failing{source}, routecar_provider_key_missing{provider,env_var},
    routecar_tenant_database_up, routecar_catalog_info{version}

A tenant label only with `tenant_label=True` (option `routecar_metrics_tenant_label`):
one series per tenant can be many; only tenants the table identified are labelled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .outcome import NONE, CallOutcome
from .providers import MissingKey

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
TTFB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
NO_TENANT = "-"


@dataclass(frozen=True)
class SidecarState:
    """What the scrape-time gauges read (built by the caller from the engine and the writer)."""

    traces: Mapping[str, Any] | None = None                     # TraceWriter.stats(); None: traces off
    health: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)   # HealthTracker.snapshot()
    entry_providers: Mapping[str, str] = field(default_factory=dict)       # entry id -> provider
    reloads: Mapping[str, tuple[int, str | None]] = field(default_factory=dict)  # source -> (count, last error)
    missing_keys: Sequence[MissingKey] = ()
    providers: Sequence[str] = ()                               # the catalog's providers
    key_envs: Mapping[str, str] = field(default_factory=dict)   # provider -> key variable
    catalog_version: str | None = None
    tenant_database_up: bool | None = None                      # None: no tenant database


class _StateCollector(Collector):
    def __init__(self, state: Callable[[], SidecarState]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s = self.state()
        if s.traces is not None:
            yield GaugeMetricFamily("routecar_trace_queue_depth", "Trace records waiting to be written",
                                    value=s.traces.get("queued") or 0)
            for name, key, doc in (("routecar_traces_written", "written", "Trace records written"),
                                   ("routecar_traces_dropped", "dropped",
                                    "Trace records dropped (queue full, closed, or a failed write)"),
                                   ("routecar_trace_write_errors", "errors", "Failed trace writes")):
                yield CounterMetricFamily(name, doc, value=s.traces.get(key) or 0)
        healthy = GaugeMetricFamily("routecar_entry_healthy", "1 unless the entry is cooling down after failures",
                                    labels=["entry", "provider"])
        rate = GaugeMetricFamily("routecar_entry_error_rate", "Failed share of the entry's recent attempts",
                                 labels=["entry", "provider"])
        for entry, h in s.health.items():
            labels = [entry, s.entry_providers.get(entry, NONE)]
            healthy.add_metric(labels, 1.0 if h.get("healthy") else 0.0)
            if h.get("error_rate") is not None:
                rate.add_metric(labels, float(h["error_rate"]))
        yield healthy
        yield rate
        reloads = CounterMetricFamily("routecar_config_reloads", "Catalog / tenant table reloads put in service",
                                      labels=["source"])
        failing = GaugeMetricFamily("routecar_config_reload_failing",
                                    "1 while the newest version of a source is broken (the last good one serves)",
                                    labels=["source"])
        for source, (count, error) in s.reloads.items():
            reloads.add_metric([source], count)
            failing.add_metric([source], 1.0 if error else 0.0)
        yield reloads
        yield failing
        missing = {m.provider for m in s.missing_keys}
        keys = GaugeMetricFamily("routecar_provider_key_missing",
                                 "1 when the provider's key variable is not set (its entries cannot be used)",
                                 labels=["provider", "env_var"])
        for provider in s.providers:
            keys.add_metric([provider, s.key_envs.get(provider, "")], 1.0 if provider in missing else 0.0)
        yield keys
        if s.tenant_database_up is not None:
            yield GaugeMetricFamily("routecar_tenant_database_up",
                                    "1 while the tenant database answers (0: cached tenants only, others get 503)",
                                    value=1.0 if s.tenant_database_up else 0.0)
        if s.catalog_version:
            info = GaugeMetricFamily("routecar_catalog_info", "The catalog version in service", labels=["version"])
            info.add_metric([s.catalog_version], 1.0)
            yield info


class Metrics:
    def __init__(self, *, tenant_label: bool = False,
                 state: Callable[[], SidecarState] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tenant_label = tenant_label
        t = ["tenant"] if tenant_label else []
        r = self.registry
        self.calls = Counter("routecar_calls", "Governed calls by the entry that answered and their outcome",
                             ["provider", "model", "outcome", "api", *t], registry=r)
        self.fallbacks = Counter("routecar_fallbacks", "Calls answered after at least one failed attempt",
                                 ["provider", "model", "api", *t], registry=r)
        self.attempts = Counter("routecar_attempts", "Upstream attempts by entry and result",
                                ["provider", "model", "error_class"], registry=r)
        self.latency = Histogram("routecar_request_duration_seconds", "Whole governed call, all attempts",
                                 ["provider", "model", "api"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttfb = Histogram("routecar_time_to_first_byte_seconds",
                              "From the call's start to the answering provider's first byte",
                              ["provider", "model", "api"], buckets=TTFB_BUCKETS, registry=r)
        self.cost = Counter("routecar_cost_usd", "Actual cost in USD from the providers' reported usage",
                            ["provider", "model", "source", *t], registry=r)
        self.tokens = Counter("routecar_tokens", "Tokens reported by providers",
                              ["provider", "model", "kind", *t], registry=r)
        if state is not None:
            r.register(_StateCollector(state))
        # labels() takes a lock and a dict lookup per call: keep the children per label set.
        self._children: dict[tuple[str, ...], tuple[Any, ...]] = {}
        self._attempts: dict[tuple[str, str, str], Any] = {}

    def _series(self, provider: str, model: str, outcome: str, api: str, tenant: str | None) -> tuple[Any, ...]:
        key = (provider, model, outcome, api, tenant or NO_TENANT)
        hit = self._children.get(key)
        if hit is None:
            t = (tenant or NO_TENANT,) if self.tenant_label else ()
            hit = (self.calls.labels(provider, model, outcome, api, *t),
                   self.fallbacks.labels(provider, model, api, *t),
                   self.latency.labels(provider, model, api), self.ttfb.labels(provider, model, api),
                   {k: self.tokens.labels(provider, model, k, *t)
                    for k in ("input", "cached_input", "output", "reasoning")},
                   {s: self.cost.labels(provider, model, s, *t) for s in ("genai-prices", "catalog")})
            if len(self._children) < 100_000:   # bounded by the catalog anyway; never unbounded
                self._children[key] = hit
        return hit

    def observe(self, o: CallOutcome) -> None:
        calls, fallbacks, latency, ttfb, tokens, cost = self._series(
            o.provider or NONE, o.model or NONE, o.outcome, o.api, o.tenant)
        calls.inc()
        latency.observe(o.duration_s)
        if o.ttfb_s is not None:
            ttfb.observe(o.ttfb_s)
        if o.fell_back:
            fallbacks.inc()
        for a in o.attempts:
            # "provider_key_missing (X not set)" -> "provider_key_missing": a bounded label value
            error_class = str(a.get("error_class") or NONE).split(" ", 1)[0]
            key = (a.get("provider") or NONE, a.get("model") or NONE, error_class)
            child = self._attempts.get(key)
            if child is None:
                child = self._attempts[key] = self.attempts.labels(*key)
            child.inc()
        u = o.usage
        if u is not None:
            tokens["input"].inc(u.input)
            tokens["output"].inc(u.output)
            if u.cached_input:
                tokens["cached_input"].inc(u.cached_input)
            if u.reasoning:
                tokens["reasoning"].inc(u.reasoning)
        if o.cost is not None and o.cost.usd > 0:
            cost[o.cost.source].inc(o.cost.usd)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The scrape body in the format the `Accept` header asks for (Prometheus text or OpenMetrics)."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type
