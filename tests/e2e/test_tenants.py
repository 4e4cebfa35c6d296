"""Issue 5 end to end: tenants identified by header, API key and proxy-auth user, through
the real `routecar run` with the real openai SDK; their compiled policies route the call,
a request header can only narrow them, and the table reloads while the sidecar runs."""

from __future__ import annotations

import json
import shutil
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from routecar.providers import DEFAULT_PROVIDERS
from tests.e2e.conftest import curl_json, sdk
from tests.fakes.config import fake_key

TENANTS = DEFAULT_PROVIDERS.parent / "tenants.yaml"
MSG = [{"role": "user", "content": "hi"}]


def _headers(rec: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in rec["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def _route(client: openai.OpenAI, **extra_headers: str) -> tuple[str, str]:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG,
                                                           extra_headers=extra_headers or None)
    raw.parse()
    return raw.headers["x-route-provider"], raw.headers["x-route-model"]


def _poll(check: Callable[[], Any], what: str, deadline_s: float = 15.0) -> Any:
    """Call `check` until it returns something truthy; fail after `deadline_s` (bounded tries)."""
    end = time.monotonic() + deadline_s
    last: Any = None
    for _ in range(1000):
        last = check()
        if last:
            return last
        if time.monotonic() > end:
            break
        time.sleep(0.1)  # pacing between polls of a condition, not a readiness wait
    pytest.fail(f"timed out waiting for {what}; last: {last!r}")


def test_header_api_key_unknown_and_narrowing(sidecar, fake):
    side = sidecar("--tenants", str(TENANTS))
    client = sdk(side)
    # header
    assert _route(client, **{"X-Tenant-Id": "initech-eu"}) == ("mistral", "mistral-small-3")
    [rec] = fake.requests("mistral")
    h = _headers(rec)
    assert h["authorization"] == [f"Bearer {fake_key('mistral')}"]
    assert "x-tenant-id" not in h
    # API-key mapping: the app's key picks the tenant and never reaches the provider
    assert _route(sdk(side, api_key="demo-key-acme")) == ("groq", "openai/gpt-oss-120b")
    [rec] = fake.requests("groq")
    assert _headers(rec)["authorization"] == [f"Bearer {fake_key('groq')}"]
    assert "demo-key-acme" not in json.dumps(rec)
    # unknown tenant: 403, nothing sent
    n_before = sum(len(fake.requests(n)) for n in fake.ports)
    with pytest.raises(openai.PermissionDeniedError) as ei:
        client.chat.completions.create(model="x", messages=MSG, extra_headers={"X-Tenant-Id": "nobody"})
    assert ei.value.status_code == 403
    assert ei.value.body["code"] == "unknown_tenant"
    assert ei.value.response.headers["x-route-trace-id"].startswith("rt_")
    # a header can narrow its tenant (EU + azure)...
    narrow = json.dumps({"rules": [["eq", "provider", "azure"]]})
    assert _route(client, **{"X-Tenant-Id": "initech-eu", "X-Route-Policy": narrow}) == ("azure", "gpt-5.5-mini")
    n_before += 1
    # ...but never loosen it: openai has no EU entry
    loosen = json.dumps({"rules": [["eq", "provider", "openai"]]})
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="x", messages=MSG,
                                       extra_headers={"X-Tenant-Id": "initech-eu", "X-Route-Policy": loosen})
    assert ei.value.body["code"] == "no_candidate"
    assert sum(len(fake.requests(n)) for n in fake.ports) == n_before
    # the dry-run rank shows the tenant's compiled policy and which rule made each clause
    code, ranked = curl_json(side, "POST", "/x/rank", json.dumps({"tenant": "wayne-mixed"}))
    assert code == 200
    assert ranked["tenant"] == "wayne-mixed" and ranked["selected"] == "mistral/mistral-medium-3"
    assert {c["id"]: c["from"] for c in ranked["policy"]["clauses"]} == {
        "quality-floor": "rule:quality-floor", "approved-providers": "rule:approved-providers",
        "data-residency": "rule:data-residency"}
    code, err = curl_json(side, "POST", "/x/rank", json.dumps({"tenant": "nobody"}))
    assert code == 403 and err["error"]["code"] == "unknown_tenant"


def test_proxy_auth_user_is_the_tenant(sidecar, fake):
    side = sidecar("--tenants", str(TENANTS), "--proxyauth", "any")
    port = side.url.rsplit(":", 1)[1]

    def client(user: str) -> openai.OpenAI:
        http_client = openai.DefaultHttpxClient(proxy=f"http://{user}:secret@127.0.0.1:{port}",
                                                verify=ssl.create_default_context(cafile=str(side.ca)))
        return openai.OpenAI(base_url="https://api.openai.com/v1", api_key="sk-app-own-key-1234567890",
                             max_retries=0, http_client=http_client)

    assert _route(client("stark-vip")) == ("anthropic", "claude-sonnet-4-6")
    assert _route(client("initech-eu")) == ("mistral", "mistral-small-3")
    for name in ("anthropic", "mistral"):
        [rec] = fake.requests(name)
        assert "proxy-authorization" not in _headers(rec)
        assert "secret" not in json.dumps(rec)
    with pytest.raises(openai.PermissionDeniedError) as ei:
        client("nobody").chat.completions.create(model="x", messages=MSG)
    assert ei.value.body["code"] == "unknown_tenant"
    assert "proxy_auth" in ei.value.body["message"]
    # each decision is traced under its tenant (the writer flushes on SIGTERM)
    assert side.stop() == 0
    rows = side.trace_rows("select tenant, chosen_entry, outcome from decisions order by ts")
    assert rows == [("stark-vip", "anthropic/claude-sonnet-4-6", "ok"),
                    ("initech-eu", "mistral/mistral-small-3", "ok"),
                    ("nobody", None, "unknown_tenant")]  # the claimed id, for debugging


def test_hot_reload_and_broken_table(sidecar, fake, tmp_path: Path):
    table = tmp_path / "tenants.yaml"
    shutil.copy(TENANTS, table)
    side = sidecar("--tenants", str(table))
    client = sdk(side)
    assert _route(client, **{"X-Tenant-Id": "initech-eu"}) == ("mistral", "mistral-small-3")
    text = table.read_text()
    moved = text.replace("plan: pro\n    region: eu", "plan: pro\n    region: us")
    assert moved != text
    table.write_text(moved)
    _poll(lambda: _route(client, **{"X-Tenant-Id": "initech-eu"}) == ("openai", "gpt-5.5-nano"),
          "initech-eu to move to region us")
    code, health = curl_json(side, "GET", "/x/healthz")
    assert code == 200 and health["status"] == "ok" and health["tenants"]["last_error"] is None

    table.write_text("tenants: [{id: broken")  # not valid YAML
    health = _poll(lambda: (h := curl_json(side, "GET", "/x/healthz")[1])["tenants"]["last_error"] and h,
                   "healthz to report the broken table")
    assert health["status"] == "degraded"
    assert "not valid YAML" in health["tenants"]["last_error"]
    assert "keeping tenant table" in health["tenants"]["last_error"]
    # the last good table stays in service
    assert _route(client, **{"X-Tenant-Id": "initech-eu"}) == ("openai", "gpt-5.5-nano")
    assert _route(client, **{"X-Tenant-Id": "stark-vip"}) == ("anthropic", "claude-sonnet-4-6")


def test_stock_mitmdump_identifies_tenants(sidecar, fake):
    """The same addon loaded by stock `mitmdump -s`: tenant options via --set, proxyauth built in."""
    side = sidecar("--set", f"routecar_tenants={TENANTS}", "--proxyauth", "any", stock=True)
    port = side.url.rsplit(":", 1)[1]
    http_client = openai.DefaultHttpxClient(proxy=f"http://wayne-mixed:pw@127.0.0.1:{port}",
                                            verify=ssl.create_default_context(cafile=str(side.ca)))
    client = openai.OpenAI(base_url="https://api.openai.com/v1", api_key="demo-key-acme",
                           max_retries=0, http_client=http_client)
    # methods that disagree (header, API key and proxy user: three tenants) are refused...
    with pytest.raises(openai.PermissionDeniedError) as ei:
        _route(client, **{"X-Tenant-Id": "initech-eu"})
    assert ei.value.body["code"] == "tenant_conflict"
    # ...and methods that agree route: the proxy user alone, with the app's own (unknown) key
    http_client2 = openai.DefaultHttpxClient(proxy=f"http://wayne-mixed:pw@127.0.0.1:{port}",
                                             verify=ssl.create_default_context(cafile=str(side.ca)))
    other = openai.OpenAI(base_url="https://api.openai.com/v1", api_key="sk-not-a-tenant-key",
                          max_retries=0, http_client=http_client2)
    assert _route(other) == ("mistral", "mistral-medium-3")
    assert _route(other, **{"X-Tenant-Id": "wayne-mixed"}) == ("mistral", "mistral-medium-3")
