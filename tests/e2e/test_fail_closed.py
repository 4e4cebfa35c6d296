"""Issue 10, section 1 end to end: governed traffic is routed, answered or refused, never
forwarded ungoverned; every answer has a trace id and a trace row; passthrough prefixes.

The spelling attacks run in reverse mode against a fake provider as the target, so a
request that slipped through would be *recorded* by the fake (the control proves it):
the raw client sends the bytes exactly as written. Host attacks run in regular mode
through the proxy's TLS interception (curl and a raw TLS client). The official openai
SDK checks what an unmodified app sees.

Tests whose calls are refused (or routed and answered) share one sidecar per configuration
(`shared_sidecar`) and check their own traces by id; a test that reads the whole trace DB,
makes providers fail or stops the sidecar starts its own."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import openai
import pytest

from routecar.providers import DEFAULT_PROVIDERS
from tests.e2e.conftest import Sidecar, sdk, trace
from tests.fakes.rawclient import RawResponse, build, parse, raw_request
from tests.test_governance import ENDPOINTS, METHODS, OVERRIDES, QUERIES, SPELLINGS

TENANTS = str(DEFAULT_PROVIDERS.parent / "tenants.yaml")
EU = json.dumps({"rules": [["eq", "region", "eu"]]})
CHAT_BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
MSG = [{"role": "user", "content": "hi"}]


def _sendable(path: str) -> bool:
    """Request targets an HTTP/1.1 request line can carry at all (no spaces, no controls)."""
    return all(0x21 <= ord(c) < 0x7F for c in path)


def _variants() -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(method, path, extra headers): every classifier attack row a request line can carry."""
    out = [("POST", p, []) for p in SPELLINGS + QUERIES if _sendable(p)]
    out += [(m, "/v1/chat/completions", []) for m in METHODS if m != "CONNECT"]
    out += [(m, "/v1/chat/completions", list(h.items())) for m, h in OVERRIDES]
    out += [(m, p, []) for m, p, _ in ENDPOINTS]
    return out


def _reverse(sidecar, fake, *args: str) -> Sidecar:
    return sidecar("--tenants", TENANTS, *args, mode=f"reverse:{fake.base('openai')}")


def test_every_spelling_is_refused_and_nothing_reaches_the_provider(sidecar, fake):
    side = _reverse(sidecar, fake)
    port = int(side.url.rsplit(":", 1)[1])
    answered: list[RawResponse] = []
    parser_refused = routed = 0
    for method, path, extra in _variants():
        body = CHAT_BODY if method == "POST" else b""
        r = raw_request(port, build(method, path, [("Host", "127.0.0.1"), ("X-Tenant-Id", "initech-eu"),
                                                   ("Authorization", "Bearer sk-app-own-key-1234567890"),
                                                   ("Content-Type", "application/json"), *extra], body))
        if path.startswith("http") and not extra and method == "POST":
            # Absolute-form is a lawful spelling of the same target: the path is exactly the
            # routed one, so it is routed (governed: the tenant's EU policy picks mistral).
            assert r.status == 200 and r.headers["x-route-provider"] == "mistral", (path, r.body[:200])
            routed += 1
            continue
        assert 400 <= r.status < 500, (method, path, r.status, r.body[:200])
        if "x-route-trace-id" in r.headers:
            assert json.loads(r.body)["error"]["code"] == "unsupported_endpoint", (method, path)
            answered.append(r)
        else:  # mitmproxy's HTTP parser refused the request line itself: never forwarded either
            parser_refused += 1
        assert fake.requests("openai") == [], (method, path)
    assert len(answered) >= 80 and parser_refused <= 5 and routed == 2
    # Control: the same bytes without a routing header are not governed, and do reach the fake.
    r = raw_request(port, build("POST", "/v1/chat/completions/", [("Host", "127.0.0.1")], CHAT_BODY))
    assert r.status == 404 and "x-route-trace-id" not in r.headers
    [rec] = fake.requests("openai")
    assert rec["raw_path"] == "/v1/chat/completions/"
    # Every refusal has its trace row: tenant, disposition, outcome, status.
    ids = [r.headers["x-route-trace-id"] for r in answered]
    assert side.stop() == 0
    rows = side.trace_rows("SELECT trace_id, tenant, disposition, outcome, status FROM decisions")
    by_id = {row[0]: row[1:] for row in rows}
    assert len(rows) == len(answered) + routed
    for r, trace_id in zip(answered, ids):
        assert by_id[trace_id] == ("initech-eu", "refused", "unsupported_endpoint", r.status)


def _curl(side: Sidecar, url: str, *args: str) -> tuple[int, dict[str, str], Any]:
    """curl through the proxy (TLS interception, HTTP/2 if offered), the path as written."""
    out = subprocess.run(["curl", "-s", "--path-as-is", "--max-time", "20", "-x", side.url, "--cacert",
                          str(side.ca), "-D", "/dev/stderr", "-o", "-", *args, url],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    # -D also holds the proxy's answer to CONNECT: the last header block is the response's.
    head = [b for b in out.stderr.split(b"\r\n\r\n") if b.strip()][-1]
    r = parse(head + b"\r\n\r\n")
    return r.status, r.headers, json.loads(out.stdout) if out.stdout else None


def test_provider_hosts_however_spelt_are_governed(shared_sidecar, fake):
    side = shared_sidecar()
    pol = ["-H", f"X-Route-Policy: {EU}", "-H", "content-type: application/json"]
    for host in ("api.openai.com.", "API.OPENAI.COM", "Api.OpenAI.Com.", "api.mistral.ai."):
        status, headers, body = _curl(side, f"https://{host}/v1/chat/completions", *pol,
                                      "--data-binary", CHAT_BODY.decode())
        assert status == 200 and headers["x-route-provider"] == "mistral", host
        status, headers, body = _curl(side, f"https://{host}/v1/embeddings", *pol, "--data-binary", "{}")
        assert status == 404 and body["error"]["code"] == "unsupported_endpoint", host
        assert headers["x-route-trace-id"].startswith("rt_")
    # The Host header names another host than the tunnel's: which one is meant? Refused.
    status, headers, body = _curl(side, "https://api.openai.com/v1/chat/completions", *pol,
                                  "-H", "Host: example.com", "--data-binary", CHAT_BODY.decode())
    assert status == 400 and "more than one host" in body["error"]["message"]
    assert len(fake.requests("mistral")) == 4
    assert all(fake.requests(n) == [] for n in fake.ports if n != "mistral")


@pytest.mark.parametrize("connect,sni,target,host", [
    # absolute-form inside the tunnel naming another host
    ("api.openai.com:443", "api.openai.com", "https://evil.example/v1/chat/completions", "api.openai.com"),
    # a tunnel to an IP address, the provider named only by SNI and Host
    ("127.0.0.2:443", "api.openai.com", "/v1/chat/completions", "api.openai.com"),
    # SNI of one provider, tunnel to another
    ("api.openai.com:443", "api.anthropic.com", "/v1/chat/completions", "api.openai.com"),
])
def test_names_that_disagree_in_a_tunnel_are_refused(shared_sidecar, fake, connect, sni, target, host):
    side = shared_sidecar()
    port = int(side.url.rsplit(":", 1)[1])
    req = build("POST", target, [("Host", host), ("X-Route-Policy", EU), ("Content-Type", "application/json")],
                CHAT_BODY)
    r = raw_request(port, req, connect=connect, sni=sni, cafile=str(side.ca))
    assert r.status == 400 and "more than one host" in json.loads(r.body)["error"]["message"]
    assert r.headers["x-route-trace-id"].startswith("rt_")
    assert all(fake.requests(n) == [] for n in fake.ports)


def test_sdk_calls_routecar_does_not_route_are_refused(shared_sidecar, fake):
    side = shared_sidecar("--tenants", TENANTS)
    tenant = {"X-Tenant-Id": "initech-eu"}
    client = sdk(side)
    calls = [   # (responses, messages and GET /models are routed or answered: tests/e2e/test_shapes.py)
        lambda c, h: c.embeddings.create(model="text-embedding-3-small", input="hi", extra_headers=h),
        lambda c, h: c.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi", extra_headers=h),
        lambda c, h: c.models.retrieve("gpt-4o", extra_headers=h),
        lambda c, h: c.moderations.create(input="hi", extra_headers=h),
    ]
    refused: dict[str, str] = {}   # trace id -> tenant
    for call in calls:
        with pytest.raises(openai.NotFoundError) as ei:
            call(client, tenant)
        assert ei.value.body["code"] == "unsupported_endpoint"
        refused[ei.value.response.headers["x-route-trace-id"]] = "initech-eu"
    # identified by its API key alone (no header at all): governed just the same
    with pytest.raises(openai.NotFoundError) as ei:
        calls[0](sdk(side, api_key="demo-key-acme"), None)
    refused[ei.value.response.headers["x-route-trace-id"]] = "acme-free"
    assert all(fake.requests(n) == [] for n in fake.ports)
    assert len(refused) == 5 and all(t.startswith("rt_") for t in refused)
    for trace_id, tenant in refused.items():
        row = trace(side, trace_id)
        assert (row["tenant"], row["disposition"]) == (tenant, "refused")


def test_ungoverned_calls_pass_and_a_default_policy_governs_them(sidecar, fake):
    side = _reverse(sidecar, fake)
    models = sdk(side).models.list()          # no header, no tenant key: untouched, the provider answers
    assert [m.id for m in models][:1] == ["gpt-4o"]
    [rec] = fake.requests("openai")
    assert ("authorization", "Bearer sk-app-own-key-1234567890") in [(k.lower(), v) for k, v in rec["headers"]]
    fake.clear_requests()
    side = sidecar("--default-policy", EU, mode=f"reverse:{fake.base('openai')}")
    listed = [m.id for m in sdk(side).models.list()]   # a default policy makes every call governed:
    assert listed and all(i.startswith(("mistral/", "azure/", "scaleway/", "google/")) for i in listed)  # routecar's list
    with pytest.raises(openai.NotFoundError) as ei:
        sdk(side).embeddings.create(model="text-embedding-3-small", input="hi")
    assert ei.value.body["code"] == "unsupported_endpoint"
    assert fake.requests("openai") == []


def test_anthropic_callers_get_anthropic_errors(shared_sidecar, fake):
    side = shared_sidecar("--tenants", TENANTS)
    for url, extra in (("https://api.anthropic.com/v1/messages/count_tokens", []),
                       ("https://api.anthropic.com/v1/complete", []),
                       ("https://api.openai.com/v1/messages/batches", ["-H", "anthropic-version: 2023-06-01"])):
        status, headers, body = _curl(side, url, "-H", "X-Tenant-Id: stark-vip", "-H", "x-api-key: sk-ant-app",
                                      "-H", "content-type: application/json", *extra,
                                      "--data-binary", '{"model": "claude", "max_tokens": 5, "messages": []}')
        assert status == 404 and body["type"] == "error", url
        assert body["error"]["type"] == "not_found_error" and body["error"]["code"] == "unsupported_endpoint"
        assert headers["x-route-trace-id"].startswith("rt_")
    assert all(fake.requests(n) == [] for n in fake.ports)


def test_every_answer_is_traced_with_its_disposition(sidecar, fake):
    side = sidecar()
    client = sdk(side)
    ok = client.chat.completions.with_raw_response.create(model="x", messages=MSG, extra_headers={"X-Route-Policy": EU})
    with pytest.raises(openai.NotFoundError) as refused:
        client.embeddings.create(model="x", input="hi", extra_headers={"X-Route-Policy": EU})
    for name in fake.ports:
        fake.set_script(name, [{"status": 503}])
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="x", messages=MSG, extra_headers={"X-Route-Policy": EU})
    assert failed.value.status_code == 502
    ids = {ok.headers["x-route-trace-id"]: ("routed", "ok", 200),
           refused.value.response.headers["x-route-trace-id"]: ("refused", "unsupported_endpoint", 404),
           failed.value.response.headers["x-route-trace-id"]: ("failed", "upstream_failed", 502)}
    assert side.stop() == 0
    rows = side.trace_rows("SELECT trace_id, disposition, outcome, status FROM decisions")
    assert {r[0]: r[1:] for r in rows} == ids


# -- passthrough ------------------------------------------------------------------------------------

def test_passthrough_prefix_forwards_unchanged_minus_routing_headers(sidecar, fake, tmp_path):
    flows = tmp_path / "flows.mitm"
    side = _reverse(sidecar, fake, "--set", "routecar_passthrough=/v1/files,/v1/batches", "--save", str(flows))
    canary = f"CANARY-PASS-{secrets.token_hex(8)}"
    # umbrella-health is a no_log tenant: the payload must not be kept anywhere
    out = subprocess.run(["curl", "-s", "-D", "-", "-o", "-", "--max-time", "20", "-X", "POST",
                          side.url + "/v1/files?purpose=batch", "-H", "X-Tenant-Id: umbrella-health",
                          "-H", "X-Route-Policy: " + EU, "-H", "Authorization: Bearer sk-app-own-files-key",
                          "--data-binary", canary], capture_output=True, timeout=30)
    r = parse(out.stdout)
    assert r.status == 404 and canary.encode() in r.body     # the fake's answer, relayed unchanged
    trace_id = r.headers["x-route-trace-id"]
    [rec] = fake.requests("openai")
    sent = {k.lower(): v for k, v in rec["headers"]}
    assert rec["raw_path"] == "/v1/files?purpose=batch" and rec["body"] == canary
    assert sent["authorization"] == "Bearer sk-app-own-files-key"       # the app's own call, its own key
    assert "x-tenant-id" not in sent and "x-route-policy" not in sent    # routing headers never leave
    # a spelling that leaves the prefix is not passthrough: refused, not forwarded
    r2 = raw_request(int(side.url.rsplit(":", 1)[1]),
                     build("POST", "/v1/files/../chat/completions", [("Host", "x"), ("X-Tenant-Id", "initech-eu")],
                           CHAT_BODY))
    assert r2.status == 404 and json.loads(r2.body)["error"]["code"] == "unsupported_endpoint"
    assert len(fake.requests("openai")) == 1
    assert side.stop() == 0
    assert side.trace_rows("SELECT tenant, disposition, outcome, status, no_log FROM decisions WHERE trace_id = ?",
                           trace_id) == [("umbrella-health", "passthrough", "passthrough", 404, 1)]
    assert side.trace_rows("SELECT count(*) FROM payloads WHERE trace_id = ?", trace_id) == [(0,)]
    for path in [side.traces, flows, *side.traces.parent.glob(side.traces.name + "-*")]:
        assert canary.encode() not in Path(path).read_bytes(), path
    assert b"sk-app-own-files-key" not in flows.read_bytes()


def test_passthrough_prefix_that_covers_a_routed_path_fails_at_start(sidecar, fake):
    with pytest.raises(Exception, match="covers /v1/chat/completions"):
        sidecar("--set", "routecar_passthrough=/v1")
