"""Prometheus metrics: per-call series, scrape-time gauges, one registry per instance."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from routecar.metrics import Metrics, SidecarState
from routecar.outcome import CallOutcome
from routecar.pricing import Cost
from routecar.providers import MissingKey
from routecar.usage import ResponseFacts, TokenUsage


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, ctype = m.exposition()
    assert ctype.startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return samples(m).get((name, tuple(sorted(labels.items()))))


def call(**kw) -> CallOutcome:
    base = dict(trace_id="rt_1", start=time.time() - 0.3, duration_s=0.3, status=200, outcome="ok",
                tenant="acme", entry="openai/gpt-x", provider="openai", model="gpt-x",
                attempts=({"entry": "openai/gpt-x", "provider": "openai", "model": "gpt-x", "error_class": "ok"},),
                ttfb_s=0.1, facts=ResponseFacts(TokenUsage(100, 40, 20, 5)), cost=Cost(0.25, "genai-prices"))
    base.update(kw)
    return CallOutcome(**base)


def test_calls_latency_tokens_cost():
    m = Metrics()
    m.observe(call())
    m.observe(call(duration_s=3.0))
    assert value(m, "routecar_calls_total", provider="openai", model="gpt-x", outcome="ok", api="chat") == 2
    assert value(m, "routecar_request_duration_seconds_count", provider="openai", model="gpt-x", api="chat") == 2
    assert value(m, "routecar_request_duration_seconds_bucket", provider="openai", model="gpt-x", api="chat",
                 le="0.5") == 1
    assert value(m, "routecar_time_to_first_byte_seconds_count", provider="openai", model="gpt-x", api="chat") == 2
    assert value(m, "routecar_tokens_total", provider="openai", model="gpt-x", kind="cached_input") == 80
    assert value(m, "routecar_tokens_total", provider="openai", model="gpt-x", kind="reasoning") == 10
    assert value(m, "routecar_cost_usd_total", provider="openai", model="gpt-x", source="genai-prices") == 0.5
    assert value(m, "routecar_attempts_total", provider="openai", model="gpt-x", error_class="ok") == 2


def test_fallbacks_and_failures():
    m = Metrics()
    attempts = ({"provider": "mistral", "model": "m-s", "error_class": "server_error"},
                {"provider": "openai", "model": "gpt-x", "error_class": "provider_key_missing (OPENAI_API_KEY not set)"},
                {"provider": "openai", "model": "gpt-y", "error_class": "ok"})
    m.observe(call(attempts=attempts, entry="openai/gpt-y", model="gpt-y"))
    m.observe(call(status=502, outcome="upstream_failed", entry=None, provider=None, model=None,
                   attempts=attempts[:2], ttfb_s=None, facts=ResponseFacts(), cost=None))
    assert value(m, "routecar_fallbacks_total", provider="openai", model="gpt-y", api="chat") == 1
    assert value(m, "routecar_calls_total", provider="none", model="none", outcome="upstream_failed",
                 api="chat") == 1
    assert value(m, "routecar_attempts_total", provider="openai", model="gpt-x",
                 error_class="provider_key_missing") == 2
    assert value(m, "routecar_attempts_total", provider="mistral", model="m-s", error_class="server_error") == 2


def test_tenant_label_only_when_enabled():
    off, on = Metrics(), Metrics(tenant_label=True)
    for m in (off, on):
        m.observe(call(tenant="acme"))
        m.observe(call(tenant=None, claimed_tenant="sk-attacker-chosen"))
    assert not any("tenant" in dict(k[1]) for k in samples(off))
    assert value(on, "routecar_calls_total", provider="openai", model="gpt-x", outcome="ok", api="chat",
                 tenant="acme") == 1
    assert value(on, "routecar_calls_total", provider="openai", model="gpt-x", outcome="ok", api="chat",
                 tenant="-") == 1
    assert "attacker" not in on.exposition()[0].decode()


def test_registries_are_per_instance():
    a, b = Metrics(), Metrics()
    a.observe(call())
    assert value(a, "routecar_calls_total", provider="openai", model="gpt-x", outcome="ok", api="chat") == 1
    assert value(b, "routecar_calls_total", provider="openai", model="gpt-x", outcome="ok", api="chat") is None


def test_scrape_time_state():
    state = SidecarState(
        traces={"queued": 7, "written": 100, "dropped": 3, "errors": 1},
        health={"openai/gpt-x": {"healthy": False, "error_rate": 0.75}, "mistral/m-s": {"healthy": True,
                                                                                         "error_rate": None}},
        entry_providers={"openai/gpt-x": "openai", "mistral/m-s": "mistral"},
        reloads={"catalog": (4, None), "tenants": (2, "tenants.yaml: broken (keeping the last good version)")},
        missing_keys=[MissingKey("mistral", "MISTRAL_API_KEY")], providers=["mistral", "openai"],
        key_envs={"mistral": "MISTRAL_API_KEY", "openai": "OPENAI_API_KEY"}, catalog_version="cat_abc")
    m = Metrics(state=lambda: state)
    assert value(m, "routecar_trace_queue_depth") == 7
    assert value(m, "routecar_traces_dropped_total") == 3
    assert value(m, "routecar_traces_written_total") == 100
    assert value(m, "routecar_entry_healthy", entry="openai/gpt-x", provider="openai") == 0
    assert value(m, "routecar_entry_healthy", entry="mistral/m-s", provider="mistral") == 1
    assert value(m, "routecar_entry_error_rate", entry="openai/gpt-x", provider="openai") == 0.75
    assert value(m, "routecar_config_reloads_total", source="catalog") == 4
    assert value(m, "routecar_config_reload_failing", source="tenants") == 1
    assert value(m, "routecar_config_reload_failing", source="catalog") == 0
    assert value(m, "routecar_provider_key_missing", provider="mistral", env_var="MISTRAL_API_KEY") == 1
    assert value(m, "routecar_provider_key_missing", provider="openai", env_var="OPENAI_API_KEY") == 0
    assert value(m, "routecar_catalog_info", version="cat_abc") == 1


def test_tenant_database_gauge():
    assert value(Metrics(state=lambda: SidecarState(tenant_database_up=False)), "routecar_tenant_database_up") == 0
    assert value(Metrics(state=lambda: SidecarState()), "routecar_tenant_database_up") is None


def test_traces_off_has_no_trace_gauges():
    m = Metrics(state=lambda: SidecarState(traces=None))
    assert not any(k[0].startswith("routecar_trace") for k in samples(m))


def test_openmetrics_when_asked():
    m = Metrics()
    m.observe(call())
    body, ctype = m.exposition("application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert ctype.startswith("application/openmetrics-text") and body.rstrip().endswith(b"# EOF")
    assert b'routecar_calls_total{api="chat",model="gpt-x",outcome="ok",provider="openai"} 1.0' in body
