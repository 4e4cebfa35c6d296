"""Issue 13 end to end through the real `routecar run`: the actual cost in the trace, the
access log, `GET /metrics` (through the proxy and in reverse mode), and missing keys that
are loud. Spans over OTLP/HTTP are in test_otlp.py."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from routecar.catalog import load_catalog
from routecar.pricing import Pricer, list_cost
from routecar.usage import TokenUsage
from tests.e2e.conftest import Sidecar, curl_json, sdk

EU = json.dumps({"rules": [["eq", "region", "eu"]]})            # -> mistral/mistral-small-3 (a fake name)
GPT = json.dumps({"rules": [["eq", "id", "openai/gpt-5.5"]]})    # a model genai-prices knows
APP_KEY = "sk-app-own-key-1234567890"
CATALOG = load_catalog()


def metrics(side: Sidecar) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics the way Prometheus would reach this sidecar."""
    if side.mode == "reverse":
        argv = ["curl", "-sf", side.url + "/metrics"]
    else:
        argv = ["curl", "-sf", "-x", side.url, "http://routecar.local/metrics"]
    text = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True).stdout
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def sample(m: dict, name: str, **labels: str) -> float | None:
    return m.get((name, tuple(sorted(labels.items()))))


def wait_for(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def call(side: Sidecar, policy: str, **kw):
    raw = sdk(side).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "what does this cost?"}],
        extra_headers={"X-Route-Policy": policy}, **kw)
    return raw, raw.parse()


def trace_row(side: Sidecar, trace_id: str) -> dict:
    def row():
        try:
            got = side.trace_rows("SELECT prompt_tokens, completion_tokens, actual_cost, cost_source, chosen_entry "
                                  "FROM decisions WHERE trace_id = ?", trace_id)
        except sqlite3.OperationalError:   # the writer has not created the tables yet
            return None
        return got[0] if got else None
    prompt, completion, cost, source, entry = wait_for(row, f"trace {trace_id}")
    return {"prompt": prompt, "completion": completion, "cost": cost, "source": source, "entry": entry}


def test_actual_cost_access_log_and_metrics_through_the_proxy(sidecar, fake):
    side = sidecar()
    raw_eu, resp_eu = call(side, EU)
    raw_gpt, resp_gpt = call(side, GPT)
    eu, gpt = trace_row(side, raw_eu.headers["x-route-trace-id"]), trace_row(side, raw_gpt.headers["x-route-trace-id"])

    # Unknown to genai-prices: the catalog's price for the tokens the provider reported.
    entry = CATALOG.get("mistral/mistral-small-3")
    assert eu["entry"] == entry.id and eu["source"] == "catalog"
    assert (eu["prompt"], eu["completion"]) == (resp_eu.usage.prompt_tokens, resp_eu.usage.completion_tokens)
    assert eu["cost"] == pytest.approx(list_cost(entry.price_in, entry.price_out, eu["prompt"], eu["completion"]))
    # Known to genai-prices: its price, not the catalog's.
    usage = TokenUsage(resp_gpt.usage.prompt_tokens, 0, resp_gpt.usage.completion_tokens)
    assert gpt["source"] == "genai-prices"
    assert gpt["cost"] == pytest.approx(Pricer().exact_cost("openai", "gpt-5.5", usage))

    # One access line per call, with what an operator needs and nothing of the payload or key.
    log = wait_for(lambda: side.log() if raw_gpt.headers["x-route-trace-id"] in side.log() else None, "access line")
    line = next(ln for ln in log.splitlines() if raw_eu.headers["x-route-trace-id"] in ln)
    assert (f"tenant=- {raw_eu.headers['x-route-fingerprint']} mistral/mistral-small-3@mistral 200 ok attempts=1 "
            in line) and f"${eu['cost']:.6f}" in line
    assert "what does this cost" not in log and APP_KEY not in log

    m = metrics(side)
    assert sample(m, "routecar_calls_total", provider="mistral", model="mistral-small-3", outcome="ok",
                  api="chat") == 1
    assert sample(m, "routecar_cost_usd_total", provider="mistral", model="mistral-small-3",
                  source="catalog") == pytest.approx(eu["cost"])
    assert sample(m, "routecar_cost_usd_total", provider="openai", model="gpt-5.5",
                  source="genai-prices") == pytest.approx(gpt["cost"])
    assert sample(m, "routecar_request_duration_seconds_count", provider="openai", model="gpt-5.5", api="chat") == 1
    assert sample(m, "routecar_tokens_total", provider="mistral", model="mistral-small-3",
                  kind="input") == eu["prompt"]
    assert sample(m, "routecar_provider_key_missing", provider="mistral", env_var="MISTRAL_API_KEY") == 0
    assert sample(m, "routecar_entry_healthy", entry="mistral/mistral-small-3", provider="mistral") == 1
    assert sample(m, "routecar_config_reloads_total", source="catalog") == 0
    assert sample(m, "routecar_trace_queue_depth") is not None
    status, health = curl_json(side, "GET", "/x/healthz")
    assert status == 200 and health["status"] == "ok" and health["missing_keys"] == []


def test_reverse_mode_metrics_fallback_and_streamed_cost(sidecar, fake):
    side = sidecar(mode="reverse")
    fake.set_script("mistral", [{"status": 503}])   # first choice fails: fallback to the next EU entry
    raw = sdk(side).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "stream me"}], stream=True,
        stream_options={"include_usage": True}, extra_headers={"X-Route-Policy": EU})
    chunks = list(raw.parse())
    usage = next(c.usage for c in chunks if c.usage)
    row = trace_row(side, raw.headers["x-route-trace-id"])
    entry = CATALOG.get(row["entry"])
    assert raw.headers["x-route-attempts"] == "2" and entry.provider != "mistral"
    assert (row["prompt"], row["completion"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert row["cost"] == pytest.approx(list_cost(entry.price_in, entry.price_out, row["prompt"], row["completion"]))
    m = wait_for(lambda: (lambda m: m if sample(m, "routecar_calls_total", provider=entry.provider,
                                                 model=entry.model, outcome="ok", api="chat") else None)(metrics(side)),
                 "the streamed call in /metrics")
    assert sample(m, "routecar_fallbacks_total", provider=entry.provider, model=entry.model, api="chat") == 1
    assert sample(m, "routecar_attempts_total", provider="mistral", model="mistral-small-3",
                  error_class="server_error") == 1
    assert sample(m, "routecar_time_to_first_byte_seconds_count", provider=entry.provider, model=entry.model,
                  api="chat") == 1


def test_missing_keys_are_loud(sidecar, fake):
    side = sidecar(env={"MISTRAL_API_KEY": "", "SCALEWAY_API_KEY": ""})
    log = wait_for(lambda: side.log() if "provider key(s) not set" in side.log() else None, "the key warning")
    assert "provider key(s) not set: MISTRAL_API_KEY (mistral), SCALEWAY_API_KEY (scaleway)" in log
    status, health = curl_json(side, "GET", "/x/healthz")
    assert status == 200 and health["status"] == "degraded"
    assert health["missing_keys"] == [{"provider": "mistral", "env_var": "MISTRAL_API_KEY"},
                                      {"provider": "scaleway", "env_var": "SCALEWAY_API_KEY"}]
    m = metrics(side)
    assert sample(m, "routecar_provider_key_missing", provider="mistral", env_var="MISTRAL_API_KEY") == 1
    assert sample(m, "routecar_provider_key_missing", provider="openai", env_var="OPENAI_API_KEY") == 0


def test_quiet_and_metrics_off(sidecar, fake):
    side = sidecar("--quiet", "--set", "routecar_metrics=false")
    raw, _ = call(side, EU)
    trace_row(side, raw.headers["x-route-trace-id"])   # the call is over and traced
    assert raw.headers["x-route-trace-id"] not in side.log()
    proc = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-x", side.url,
                           "http://routecar.local/metrics"], capture_output=True, text=True, timeout=20)
    assert proc.stdout == "404"


def test_tenant_label_is_opt_in(sidecar, fake, tmp_path):
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("tenants:\n  - {id: acme, tier: free, region: eu}\n")
    side = sidecar("--tenants", str(tenants), "--set", "routecar_metrics_tenant_label=true")
    sdk(side).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                      extra_headers={"X-Tenant-Id": "acme"})
    m = wait_for(lambda: (lambda m: m if any(dict(k[1]).get("tenant") == "acme" for k in m) else None)(metrics(side)),
                 "a tenant-labelled series")
    assert any(k[0] == "routecar_calls_total" and dict(k[1]).get("tenant") == "acme" for k in m)
