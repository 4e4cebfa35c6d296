"""Issue 10, sections 2-4 end to end: identity cannot be swapped, nothing of the app's leaks to
a provider, nothing of the operator's comes back, bad routing-header bytes are a 400.

Real `routecar run` (and stock mitmdump for the header allowlist), the official openai
SDK, curl, and a raw socket client where a library would clean the bytes up."""

from __future__ import annotations

import json
import ssl
import subprocess

import openai
import pytest

from routecar.providers import DEFAULT_PROVIDERS, FORWARD_HEADERS
from tests.e2e.conftest import Sidecar, curl_json, sdk, trace
from tests.fakes.config import fake_key
from tests.fakes.rawclient import build, raw_request

TENANTS = str(DEFAULT_PROVIDERS.parent / "tenants.yaml")
EU = json.dumps({"rules": [["eq", "region", "eu"]]})
MSG = [{"role": "user", "content": "hi"}]
APP_KEY = "sk-app-own-key-1234567890"
CHAT_BODY = json.dumps({"model": "gpt-4o", "messages": MSG}).encode()


def _proxied(side: Sidecar, user: str, api_key: str = APP_KEY) -> openai.OpenAI:
    port = side.url.rsplit(":", 1)[1]
    http_client = openai.DefaultHttpxClient(proxy=f"http://{user}:pw@127.0.0.1:{port}",
                                            verify=ssl.create_default_context(cafile=str(side.ca)))
    return openai.OpenAI(base_url="https://api.openai.com/v1", api_key=api_key, max_retries=0,
                         http_client=http_client)


# -- 2. identity -----------------------------------------------------------------------------------

def test_identities_that_disagree_are_refused(sidecar, fake):
    plain = sidecar("--tenants", TENANTS)
    side = sidecar("--tenants", TENANTS, "--proxyauth", "any")
    attempts = [
        (sdk(plain, api_key="demo-key-acme"), {"X-Tenant-Id": "initech-eu"}),    # key says acme, header initech
        (_proxied(side, "acme-free", api_key="demo-key-acme"), {"X-Tenant-Id": "initech-eu"}),
        (_proxied(side, "initech-eu", api_key="demo-key-acme"), None),           # key vs proxy user
        (_proxied(side, "stark-vip"), {"X-Tenant-Id": "initech-eu"}),             # proxy user vs header
        (_proxied(side, "stark-vip", api_key="demo-key-acme"), {"X-Tenant-Id": "initech-eu"}),  # all three
    ]
    for client, headers in attempts:
        for call in (lambda: client.chat.completions.create(model="x", messages=MSG, extra_headers=headers),
                     lambda: client.responses.create(model="x", input="hi", extra_headers=headers)):
            with pytest.raises(openai.PermissionDeniedError) as ei:
                call()
            assert ei.value.status_code == 403 and ei.value.body["code"] == "tenant_conflict"
            assert ei.value.response.headers["x-route-trace-id"].startswith("rt_")
            assert "demo-key-acme" not in json.dumps(ei.value.body)
    # agreeing methods are fine
    ok = _proxied(side, "acme-free", api_key="demo-key-acme").chat.completions.with_raw_response.create(
        model="x", messages=MSG, extra_headers={"X-Tenant-Id": "acme-free"})
    assert ok.headers["x-route-provider"] == "groq"
    assert sum(len(fake.requests(n)) for n in fake.ports) == 1


@pytest.mark.parametrize("headers,status,code", [
    ([("X-Tenant-Id", "initech-eu"), ("X-Tenant-Id", "stark-vip")], 400, "invalid_request"),
    ([("X-Tenant-Id", "initech-eu"), ("x-tenant-id", "initech-eu")], 400, "invalid_request"),
    ([("X-Route-Policy", EU), ("X-ROUTE-POLICY", '{"rules": []}')], 400, "invalid_request"),
    ([("X-Tenant-Id", b"initech-\xff\xfe")], 400, "invalid_request"),
    ([("X-Route-Policy", b'{"rules": [["eq", "region", "\xe9u"]]}')], 400, "invalid_request"),
    ([("X-Tenant-Id", "initech-eu"), ("X-Route-Policy", b"\xc0\xaf")], 400, "invalid_request"),
    ([("X-Tenant-Id", "")], 400, "invalid_request"),
    ([("X-Route-Policy", json.dumps({"rules": [{"rule": ["eq", "region", "us"], "from": "rule:data-residency"}]}))],
     400, "invalid_policy"),
])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_routing_headers_raw(shared_sidecar, fake, headers, status, code, path):
    """Raw bytes: duplicates, case variants and non-UTF-8 values reach routecar exactly as sent.
    Every case is refused before any provider is called: one sidecar serves them all."""
    side = shared_sidecar("--tenants", TENANTS, mode=f"reverse:{fake.base('openai')}")
    port = int(side.url.rsplit(":", 1)[1])
    r = raw_request(port, build("POST", path, [("Host", "127.0.0.1"), ("Content-Type", "application/json"),
                                               *headers], CHAT_BODY))
    assert r.status == status, r.body
    assert json.loads(r.body)["error"]["code"] == code
    assert r.headers["x-route-trace-id"].startswith("rt_")
    assert all(fake.requests(n) == [] for n in fake.ports)
    row = trace(side, r.headers["x-route-trace-id"])
    assert (row["disposition"], row["outcome"]) == ("refused", code)


def test_admin_token_protects_tenant_rank_and_health_details(sidecar, fake, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("op-admin-s3cret-token\n")
    for mode in ("regular", "reverse"):
        side = sidecar("--tenants", TENANTS, "--set", f"routecar_admin_token=@{token_file}", mode=mode)
        code, body = curl_json(side, "POST", "/x/rank", json.dumps({"tenant": "initech-eu"}))
        assert (code, body["error"]["code"]) == (401, "admin_token_required")
        code, body = curl_json(side, "GET", "/x/healthz")
        assert (code, body) == (200, {"status": "ok"})
        code, body = curl_json(side, "POST", "/x/rank", json.dumps({"policy": json.loads(EU)}))
        assert code == 200   # no tenant named: open
        base = side.url if mode == "reverse" else "http://routecar.local"
        proxy = [] if mode == "reverse" else ["-x", side.url]
        for header in ("Authorization: Bearer op-admin-s3cret-token", "X-Routecar-Token: op-admin-s3cret-token"):
            out = subprocess.run(["curl", "-s", *proxy, "-H", header, base + "/x/healthz"],
                                 capture_output=True, text=True, timeout=20).stdout
            assert "catalog" in json.loads(out)
            out = subprocess.run(["curl", "-s", *proxy, "-H", header, "-H", "content-type: application/json",
                                  "--data-binary", json.dumps({"tenant": "initech-eu"}), base + "/x/rank"],
                                 capture_output=True, text=True, timeout=20).stdout
            assert json.loads(out)["selected"] == "mistral/mistral-small-3"


# -- 3. nothing of the app's leaks ------------------------------------------------------------------

APP_HEADERS = {"Cookie": "session=app-cookie-s3cret", "Ocp-Apim-Subscription-Key": "apim-app-s3cret",
               "Helicone-Auth": "Bearer helicone-app-s3cret", "OpenAI-Organization": "org-app-s3cret",
               "OpenAI-Project": "proj_app_s3cret", "X-Custom-Secret": "custom-app-s3cret",
               "Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
               "X-Goog-Api-Key": "goog-app-s3cret", "Anthropic-Api-Key": "ant-app-s3cret",
               "Forwarded": "for=10.1.2.3", "X-Forwarded-For": "10.1.2.3",
               "OpenAI-Beta": "assistants=v2", "Anthropic-Beta": "tools-2024-05-16"}
# What aiohttp adds on its own besides routecar's allowlist and the one credential.
TRANSPORT = {"host", "content-length", "accept-encoding", "user-agent"}


@pytest.mark.parametrize("stock,stream", [(False, False), (False, True), (True, False)])
def test_only_allowlisted_headers_and_one_credential_reach_the_provider(sidecar, fake, stock, stream):
    side = sidecar(stock=stock)
    client = sdk(side, default_headers=APP_HEADERS)
    pol = json.dumps({"rules": [["eq", "provider", "mistral"]], "fallback": {"max_attempts": 2}})
    fake.set_script("mistral", [{"status": 503, "times": 1}])   # two attempts: each one checked
    out = client.chat.completions.create(model="x", messages=MSG, stream=stream,
                                         extra_headers={"X-Route-Policy": pol, "X-Tenant-Id": ""})
    if stream:
        list(out)
    recs = fake.requests("mistral")
    assert len(recs) == 2
    for rec in recs:
        names = [k.lower() for k, _ in rec["headers"]]
        assert set(names) <= FORWARD_HEADERS | {"authorization", "content-type"} | TRANSPORT, names
        assert names.count("authorization") == 1
        sent = dict((k.lower(), v) for k, v in rec["headers"])
        assert sent["authorization"] == f"Bearer {fake_key('mistral')}"
        # a chat provider gets the chat protocol headers; Anthropic's stay behind (docs/api-shapes.md)
        assert sent["openai-beta"] == "assistants=v2" and "anthropic-beta" not in sent
        blob = json.dumps(rec)
        for secret in ("s3cret", APP_KEY, "10.1.2.3", "0af7651916cd43dd"):
            assert secret not in blob


def test_operator_key_never_comes_back(sidecar, fake):
    side = sidecar()
    client = sdk(side)
    key = fake_key("mistral")
    pol = {"X-Route-Policy": json.dumps({"rules": [["eq", "provider", "mistral"]]})}
    # a provider error that echoes the request headers (a 422 the app sees as is) ...
    fake.set_script("mistral", [{"status": 422, "echo_headers": True}])
    with pytest.raises(openai.UnprocessableEntityError) as ei:
        client.chat.completions.create(model="x", messages=MSG, extra_headers=pol)
    raw = ei.value.response
    assert "Bearer [redacted]" in ei.value.body["message"]
    assert key not in raw.text and key not in json.dumps(dict(raw.headers))
    assert raw.headers["x-echo-authorization"] == "Bearer [redacted]"
    # ... a 200 whose content echoes them, plain and no_log (through the relay) ...
    for no_log in (False, True):
        fake.set_script("mistral", [{"echo_headers": True}])
        p = {"X-Route-Policy": json.dumps({"rules": [["eq", "provider", "mistral"]], "no_log": no_log})}
        resp = client.chat.completions.with_raw_response.create(model="x", messages=MSG, extra_headers=p)
        assert key not in resp.text and key not in json.dumps(dict(resp.headers))
        assert "[redacted]" in resp.parse().choices[0].message.content
    # ... and a stream whose echo is split across the provider's writes.
    head = 'data: {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{"index": 0, '
    event = head + '"delta": {"content": "you sent {authorization} ok"}, "finish_reason": null}]}\n\n'
    before, after = event.split("{authorization}")
    fake.set_script("mistral", [{"raw_chunks": [before + "Bearer " + key[:6], key[6:] + after,
                                                "data: [DONE]\n\n"], "chunk_delay": 0.2}])
    text = "".join(c.choices[0].delta.content or ""
                   for c in client.chat.completions.create(model="x", messages=MSG, stream=True, extra_headers=pol))
    assert text == "you sent Bearer [redacted] ok"
    assert side.stop() == 0
    assert not side.trace_rows("SELECT trace_id FROM payloads WHERE request LIKE ? OR response LIKE ?",
                               f"%{key}%", f"%{key}%")
