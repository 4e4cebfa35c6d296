"""Issue 3 end to end: an unmodified app's call goes through routecar and comes back
from the model the policy chose, in regular and reverse mode, via `routecar run`
and via stock `mitmdump -s addon/mitm/addon.py`.

Tests that only make calls that succeed or are refused before any provider share one
sidecar per configuration (`shared_sidecar`); the others start their own."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import curl_json, sdk
from tests.fakes.config import fake_key

EU = json.dumps({"rules": [["eq", "region", "eu"]]})
APP_KEY = "sk-app-own-key-1234567890"


def _headers(rec: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in rec["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


@pytest.mark.parametrize("mode,stock", [("regular", False), ("reverse", False), ("regular", True),
                                        ("reverse", True)])
def test_policy_picks_provider_and_model(shared_sidecar, fake, mode, stock):
    side = shared_sidecar(mode=mode, stock=stock)
    client = sdk(side)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Route-Policy": EU, "X-Tenant-Id": ""})
    resp = raw.parse()
    assert raw.headers["x-route-provider"] == "mistral"
    assert raw.headers["x-route-model"] == "mistral-small-3"
    assert raw.headers["x-route-attempts"] == "1"
    assert raw.headers["x-route-fingerprint"].startswith("pol_")
    assert raw.headers["x-route-trace-id"].startswith("rt_")
    assert resp.choices[0].message.content == "[fake:mistral] model=mistral-small-3 ok"
    [rec] = fake.requests("mistral")
    h = _headers(rec)
    # Exactly one credential leaves, and it is the operator's.
    assert h["authorization"] == [f"Bearer {fake_key('mistral')}"]
    assert "x-route-policy" not in h and "x-tenant-id" not in h and "api-key" not in h
    assert APP_KEY not in json.dumps(rec)
    assert rec["body"]["model"] == "mistral-small-3"
    assert fake.requests("openai") == []


def test_api_key_auth_style(shared_sidecar, fake):
    side = shared_sidecar()
    pol = json.dumps({"rules": [["eq", "provider", "azure"]]})
    sdk(side).chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                      extra_headers={"X-Route-Policy": pol})
    [rec] = fake.requests("azure")
    h = _headers(rec)
    assert h["api-key"] == [fake_key("azure")]
    assert "authorization" not in h


@pytest.mark.parametrize("mode", ["regular", "reverse"])
def test_streaming_is_chunk_by_chunk(shared_sidecar, fake, mode):
    side = shared_sidecar(mode=mode)
    fake.set_script("mistral", [{"chunk_delay": 0.4, "chunks": 4}])
    t0 = time.monotonic()
    stream = sdk(side).chat.completions.create(
        model="gpt-4o", stream=True, messages=[{"role": "user", "content": "stream please"}],
        extra_headers={"X-Route-Policy": EU})
    arrivals, text = [], ""
    for chunk in stream:
        arrivals.append(time.monotonic() - t0)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    assert text == "[fake:mistral] model=mistral-small-3 ok"
    # The first chunk arrived while the fake still slept before the next ones.
    assert arrivals[0] < arrivals[-1] - 0.8


def test_invalid_policy_reaches_no_provider(shared_sidecar, fake):
    side = shared_sidecar()
    bad = json.dumps({"rules": [["eq", "regoin", "eu"], ["cmp", "provider", "ge", 1]]})
    with pytest.raises(openai.BadRequestError) as ei:
        sdk(side).chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                          extra_headers={"X-Route-Policy": bad})
    err = ei.value.body
    assert ei.value.status_code == 400
    assert ei.value.response.headers["x-route-trace-id"].startswith("rt_")
    assert err["code"] == "invalid_policy"
    paths = [e["path"] for e in err["errors"]]
    assert paths == ["rules[0][1]", "rules[1]"]
    assert "did you mean 'region'" in err["errors"][0]["message"]
    assert all(fake.requests(n) == [] for n in fake.ports)


def test_no_candidate_explains_each_drop(shared_sidecar, fake):
    side = shared_sidecar()
    pol = json.dumps({"rules": [{"id": "eu", "rule": ["eq", "region", "eu"]},
                                {"id": "floor", "rule": ["cmp", "bench_intelligence", "ge", 0.99]}]})
    with pytest.raises(openai.BadRequestError) as ei:
        sdk(side).chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                          extra_headers={"X-Route-Policy": pol})
    err = ei.value.body
    assert err["code"] == "no_candidate"
    dropped = {d["id"]: d for d in err["dropped"]}
    assert dropped["openai/gpt-5.5"]["id"] == "openai/gpt-5.5"
    assert "eu failed" in dropped["openai/gpt-5.5"]["reason"]
    assert "floor failed" in dropped["mistral/mistral-large-3"]["reason"]
    assert all(fake.requests(n) == [] for n in fake.ports)


def test_missing_provider_key_names_the_variable(sidecar, fake):
    side = sidecar(env={"MISTRAL_API_KEY": ""})
    pol = json.dumps({"rules": [["eq", "provider", "mistral"]]})
    with pytest.raises(openai.InternalServerError) as ei:
        sdk(side).chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                          extra_headers={"X-Route-Policy": pol})
    assert ei.value.status_code == 500
    assert ei.value.body["code"] == "provider_key_missing"
    assert "MISTRAL_API_KEY" in ei.value.body["message"]
    assert fake_key("mistral") not in json.dumps(ei.value.body)


def test_no_policy_passes_through_untouched(shared_sidecar, fake):
    # Reverse mode with the dummy target: an unrouted call reaches the target unchanged,
    # so it fails at the (down) target instead of being routed anywhere.
    side = shared_sidecar(mode="reverse")
    with pytest.raises(openai.APIStatusError) as ei:
        sdk(side).chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 502
    assert "x-route-trace-id" not in ei.value.response.headers
    assert all(fake.requests(n) == [] for n in fake.ports)


def test_default_policy_applies_without_header(sidecar, fake):
    side = sidecar("--default-policy", EU)
    raw = sdk(side).chat.completions.with_raw_response.create(
        model="x", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-route-provider"] == "mistral"


@pytest.mark.parametrize("mode", ["regular", "reverse"])
def test_dry_run_endpoints_withcurl_json(shared_sidecar, fake, mode):
    side = shared_sidecar(mode=mode)
    code, fields = curl_json(side, "GET", "/x/fields")
    assert code == 200
    names = {f["name"] for f in fields["fields"]}
    assert {"bench_intelligence", "provider", "region", "est_cost", "healthy", "tier"} <= names
    code, ranked = curl_json(side, "POST", "/x/rank", json.dumps({"policy": {"rules": [["eq", "region", "eu"]]}}))
    assert code == 200
    assert ranked["selected"] == "mistral/mistral-small-3"
    assert len(ranked["candidates"]) == 19
    code, bad = curl_json(side, "POST", "/x/rank", json.dumps({"policy": {"rules": [["eq", "nope", 1]]}}))
    assert code == 400 and bad["error"]["code"] == "invalid_policy"
    code, health = curl_json(side, "GET", "/x/healthz")
    assert code == 200 and health["status"] == "ok"
    code, cat = curl_json(side, "GET", "/x/catalog")
    assert code == 200 and len(cat["entries"]) == 19
    code, missing = curl_json(side, "GET", "/x/nope")
    assert code == 404
    assert all(fake.requests(n) == [] for n in fake.ports)


def test_malformed_body_is_a_clear_400(shared_sidecar, fake):
    side = shared_sidecar(mode="reverse")
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "-X", "POST", side.url + "/v1/chat/completions",
                          "-H", f"X-Route-Policy: {EU}", "-H", "content-type: application/json",
                          "--data-binary", "{not json"], capture_output=True, text=True, timeout=20).stdout
    body, _, code = out.rpartition("\n")
    assert code == "400"
    assert json.loads(body)["error"]["code"] == "invalid_request"
    assert all(fake.requests(n) == [] for n in fake.ports)


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_sigterm_flushes_traces(sidecar, fake, writer):
    side = sidecar("--set", f"routecar_traces_writer={writer}")
    for _ in range(3):
        sdk(side).chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                          extra_headers={"X-Route-Policy": EU})
    assert side.stop() == 0
    rows = side.trace_rows("select chosen_entry, outcome, attempts_count from decisions")
    assert rows == [("mistral/mistral-small-3", "ok", 1)] * 3


def test_catalog_hot_reload_keeps_the_last_good_version(sidecar, fake, tmp_path):
    import yaml

    shipped = yaml.safe_load((Path(__file__).resolve().parents[2] / "policies" / "catalog.yaml").read_text())
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(shipped))
    side = sidecar("--catalog", str(catalog))
    pick = lambda: sdk(side).chat.completions.with_raw_response.create(  # noqa: E731
        model="x", messages=[{"role": "user", "content": "hi"}], extra_headers={"X-Route-Policy": EU}).headers
    assert pick()["x-route-model"] == "mistral-small-3"
    # The operator drops the cheapest EU entries: the next call follows the new catalog.
    shipped["entries"] = [e for e in shipped["entries"] if not e["id"].endswith("mistral-small-3")]
    catalog.write_text(yaml.safe_dump(shipped))
    deadline = time.monotonic() + 15
    while pick()["x-route-model"] == "mistral-small-3":
        assert time.monotonic() < deadline, "catalog change not picked up"
        time.sleep(0.2)
    assert pick()["x-route-model"] == "llama-3.3-70b-instruct"
    # A broken version keeps the last good one in service and says so.
    catalog.write_text("entries: [{id: broken}]\n")
    deadline = time.monotonic() + 15
    while not (health := curl_json(side, "GET", "/x/healthz")[1])["catalog"]["last_error"]:
        assert time.monotonic() < deadline, "broken catalog not reported"
        time.sleep(0.2)
    assert health["status"] == "degraded" and "keeping the last good version" in health["catalog"]["last_error"]
    assert pick()["x-route-model"] == "llama-3.3-70b-instruct"
