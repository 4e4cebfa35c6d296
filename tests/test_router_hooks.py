"""Router hooks with mitmproxy's test helpers: options parsed at configure, flows in, flows out.

Only paths that answer before any upstream call are driven here (dry-run
endpoints, pass-through, policy/tenant errors); routed calls are end-to-end tests.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import exceptions, http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from routecar.mitm.router import Router
from routecar.providers import DEFAULT_PROVIDERS

POLICIES = DEFAULT_PROVIDERS.parent
TENANTS = str(POLICIES / "tenants.yaml")
EU = json.dumps({"rules": [["eq", "region", "eu"]]})
CHAT = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), timeout=30))


def flow(host: str = "api.openai.com", path: str = "/v1/chat/completions", method: str = "POST",
         headers: list[tuple[str, str]] | None = None, body: bytes = CHAT, port: int = 443,
         scheme: str = "https", mode: str = "regular", sni: str | None = None) -> http.HTTPFlow:
    hdrs = http.Headers([(k.encode(), v.encode()) for k, v in
                         (headers if headers is not None else [("Authorization", "Bearer sk-app-key")])])
    req = tutils.treq(host=host, port=port, scheme=scheme.encode(), method=method.encode(),
                      path=path.encode(), headers=hdrs, content=body)
    f = tflow.tflow(req=req)
    f.client_conn.proxy_mode = ProxyMode.parse(mode)
    f.client_conn.sni = sni  # tflow's default ("address") would name a second host
    return f


def configured(tctx: taddons.context, router: Router, **opts: Any) -> Router:
    tctx.configure(router, routecar_traces="off", **opts)
    assert router.engine is not None
    return router


def error_of(f: http.HTTPFlow) -> dict[str, Any]:
    assert f.response is not None
    assert f.response.headers["content-type"] == "application/json"
    return json.loads(f.response.content)["error"]


# -- configure ------------------------------------------------------------------------------

@pytest.mark.parametrize("option,content,message", [
    ("routecar_catalog", "entries: [{id: x}]", "routecar:"),
    ("routecar_catalog", "{not yaml", "routecar:"),
    ("routecar_providers", "providers: {openai: {base_url: ftp://x, key_env: K}}", "base_url"),
    ("routecar_tenants", "tenants: [{plan: free}]", "missing id"),
    ("routecar_tenants", "tenants: [{id: t, quality_floor: high}]", "do not compile"),
    ("routecar_rules", "rules: [{id: r, when: {}, add: {bogus: 1}}]", "routecar:"),
])
def test_bad_file_fails_at_configure(tmp_path: Path, option, content, message):
    bad = tmp_path / ("bad.yaml")
    bad.write_text(content)
    router = Router()
    with taddons.context(router) as tctx:
        extra = {"routecar_tenants": TENANTS} if option == "routecar_rules" else {}
        with pytest.raises(exceptions.OptionsError, match=message):
            tctx.configure(router, **{option: str(bad)}, **extra)


@pytest.mark.parametrize("opts,message", [
    ({"routecar_catalog": "/nonexistent/catalog.yaml"}, "routecar:"),
    ({"routecar_identify": "header,telepathy"}, "telepathy"),
    ({"routecar_tenants": TENANTS, "routecar_default_tenant": "nobody"}, "default tenant 'nobody'"),
    ({"routecar_default_policy": '{"rules": [["eq", "nope", 1]]}'}, "invalid policy"),
])
def test_bad_option_fails_at_configure(opts, message):
    router = Router()
    with taddons.context(router) as tctx:
        with pytest.raises(exceptions.OptionsError, match=message):
            tctx.configure(router, **opts)


def test_regular_mode_intercepts_only_provider_hosts():
    router = Router()
    with taddons.context(router) as tctx:
        configured(tctx, router)
        patterns = tctx.options.allow_hosts
        assert len(patterns) == len(router.engine.providers.intercept_hosts) + 1

        def intercepted(hostport: str) -> bool:  # as mitmproxy matches them
            return any(re.search(p, hostport, re.IGNORECASE) for p in patterns)

        for name in ("api.openai.com:443", "API.OpenAI.com:443", "api.openai.com.:443", "api.openai.com..:8443",
                     "routecar.local:80", "routecar-eu.openai.azure.com:443", "api.anthropic.com.:443"):
            assert intercepted(name), name
        for name in ("example.com:443", "api.openai.com.evil.example:443", "xapi.openai.com:443",
                     "api.openai.co:443", "evil.example:443"):
            assert not intercepted(name), name


def test_reverse_mode_leaves_allow_hosts_alone():
    router = Router()
    with taddons.context(router) as tctx:
        tctx.options.update(mode=["reverse:http://127.0.0.1:9"])
        configured(tctx, router)
        assert tctx.options.allow_hosts == []


# -- request hook ---------------------------------------------------------------------------

def test_dry_run_answered_by_addon():
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            configured(tctx, router)
            f = flow(host="routecar.local", path="/x/fields", method="GET", port=80, scheme="http", body=b"")
            await router.request(f)
            assert f.response is not None and f.response.status_code == 200
            assert f.response.headers["content-type"] == "application/json"
            names = {x["name"] for x in json.loads(f.response.content)["fields"]}
            assert {"provider", "region", "bench_intelligence"} <= names
            f = flow(host="routecar.local", path="/x/nope", method="GET", port=80, scheme="http", body=b"")
            await router.request(f)
            assert f.response.status_code == 404
    run(body)


def test_dry_run_in_reverse_mode_at_own_address():
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            tctx.options.update(mode=["reverse:http://127.0.0.1:9"])
            configured(tctx, router, routecar_tenants=TENANTS)
            f = flow(host="127.0.0.1", port=9, scheme="http", path="/x/rank",
                     body=json.dumps({"tenant": "initech-eu"}).encode(), mode="reverse:http://127.0.0.1:9")
            await router.request(f)
            out = json.loads(f.response.content)
            assert f.response.status_code == 200
            assert out["selected"] == "mistral/mistral-small-3"
            assert out["policy"]["clauses"][0]["from"] == "rule:data-residency"
    run(body)


@pytest.mark.parametrize("kw", [
    {"host": "example.com", "path": "/v1/chat/completions"},      # not a provider host
    {"path": "/v1/models", "method": "GET", "body": b""},         # provider host, not a chat call
    {},                                                           # chat call, but no policy/tenant
])
def test_untouched_requests(kw):
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            configured(tctx, router)
            f = flow(**kw)
            url, content = f.request.url, f.request.content
            await router.request(f)
            assert f.response is None
            assert f.request.url == url and f.request.content == content
            assert f.request.headers["Authorization"] == "Bearer sk-app-key"
            assert "routecar" not in f.metadata
    run(body)


def test_invalid_policy_is_400_and_credentials_redacted():
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            configured(tctx, router)
            f = flow(headers=[("Authorization", "Bearer sk-app-key"), ("X-Route-Policy", '{"rules": [["eq","regoin","eu"]]}')])
            await router.request(f)
            assert f.response.status_code == 400
            err = error_of(f)
            assert err["code"] == "invalid_policy"
            assert [e["path"] for e in err["errors"]] == ["rules[0][1]"]
            assert f.response.headers["x-route-trace-id"].startswith("rt_")
            assert f.request.headers["Authorization"] == "[redacted]"
            assert f.request.headers["X-Route-Policy"] == "[redacted]"
            assert b"sk-app-key" not in f.request.raw_content + bytes(str(f.request.headers), "utf-8")
    run(body)


def test_malformed_body_is_400():
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            configured(tctx, router)
            f = flow(headers=[("X-Route-Policy", EU)], body=b"{nope")
            await router.request(f)
            assert f.response.status_code == 400 and error_of(f)["code"] == "invalid_request"
    run(body)


@pytest.mark.parametrize("headers,proxyauth,method", [
    ([("X-Tenant-Id", "nobody"), ("Authorization", "Bearer sk-app-key")], None, "header"),
    ([("Authorization", "Bearer sk-app-key")], ("nobody", "secret"), "proxy_auth"),
])
def test_unknown_tenant_is_403(headers, proxyauth, method):
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            configured(tctx, router, routecar_tenants=TENANTS)
            f = flow(headers=headers)
            if proxyauth:
                f.metadata["proxyauth"] = proxyauth
            await router.request(f)
            assert f.response.status_code == 403
            err = error_of(f)
            assert err["code"] == "unknown_tenant"
            assert f"identified by {method}" in err["message"]
            assert f.response.headers["x-route-trace-id"].startswith("rt_")
            assert f.request.headers["Authorization"] == "[redacted]"
    run(body)


def test_unknown_tenant_uses_default_tenant_instead():
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            configured(tctx, router, routecar_tenants=TENANTS, routecar_default_tenant="initech-eu")
            # the header narrows the default tenant to nothing: answered before any upstream call
            f = flow(headers=[("X-Tenant-Id", "nobody"),
                              ("X-Route-Policy", json.dumps({"rules": [["eq", "provider", "openai"]]}))])
            await router.request(f)
            assert f.response.status_code == 400 and error_of(f)["code"] == "no_candidate"
            assert f.metadata["routecar"].resolved.tenant == "initech-eu"
    run(body)


def test_tenant_header_cannot_loosen_via_proxy_user():
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            configured(tctx, router, routecar_tenants=TENANTS)
            f = flow(headers=[("X-Route-Policy", json.dumps({"rules": [["eq", "provider", "groq"]]}))])
            f.metadata["proxyauth"] = ("umbrella-health", "x")
            await router.request(f)
            assert f.response.status_code == 400
            err = error_of(f)
            assert err["code"] == "no_candidate"
            state = f.metadata["routecar"]
            assert (state.resolved.tenant, state.resolved.method) == ("umbrella-health", "proxy_auth")
            # umbrella-health is no_log: the payload is not kept in the flow either
            assert b"hi" not in f.request.content
    run(body)


def test_tenant_ignored_when_tenants_not_configured_but_header_given():
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            configured(tctx, router)
            f = flow(headers=[("X-Tenant-Id", "initech-eu")])
            await router.request(f)
            assert f.response.status_code == 403 and error_of(f)["code"] == "unknown_tenant"
    run(body)


def test_dead_or_answered_flows_are_skipped():
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            configured(tctx, router)
            f = flow(headers=[("X-Route-Policy", "{bad")])
            f.live = False
            await router.request(f)
            assert f.response is None
            f = flow(headers=[("X-Route-Policy", "{bad")])
            f.response = tutils.tresp()
            await router.request(f)
            assert f.response.status_code == 200
    run(body)


# -- a routed call, in-process against the loopback fakes ------------------------------------

def test_routed_flow_carries_headers_comment_and_marks_failures(tmp_path: Path, monkeypatch):
    from tests.fakes import FakeFleet
    from tests.fakes.config import write_loopback_providers

    async def main() -> None:
        fleet = await FakeFleet(["mistral", "scaleway"]).start_async()
        try:
            providers, keys = write_loopback_providers(fleet.url, tmp_path / "providers.yaml",
                                                       names=["mistral", "scaleway"])
            for k, v in keys.items():
                monkeypatch.setenv(k, v)
            router = Router()
            with taddons.context(router) as tctx:
                configured(tctx, router, routecar_providers=str(providers), routecar_catalog=str(
                    _eu_catalog(tmp_path)))
                await router.running()
                try:
                    # (only these two providers are configured: the app calls one of their hosts)
                    ok = flow(host="api.mistral.ai",
                              headers=[("X-Route-Policy", EU), ("Authorization", "Bearer sk-app-key")])
                    await router.request(ok)
                    assert ok.response is not None and ok.response.status_code == 200
                    assert ok.response.headers["x-route-provider"] == "mistral"
                    assert ok.comment.startswith("routecar rt_") and "-> mistral/mistral-small-3" in ok.comment
                    assert not ok.marked
                    assert ok.request.headers["Authorization"] == "[redacted]"  # kept out of saved flows
                    fleet.set_script("mistral", [{"status": 503}])
                    fleet.set_script("scaleway", [{"status": 503}])
                    bad = flow(host="api.mistral.ai", headers=[("X-Route-Policy", EU)])
                    await router.request(bad)
                    assert bad.response is not None and bad.response.status_code == 502
                    assert bad.marked == ":warning:"
                    assert "status=502" in bad.comment
                finally:
                    await router.done()
        finally:
            await fleet.stop_async()

    run(main)


def _eu_catalog(tmp_path: Path) -> Path:
    """The default catalog restricted to the two loopback providers of this test."""
    import yaml
    data = yaml.safe_load((POLICIES / "catalog.yaml").read_text())
    data["entries"] = [e for e in data["entries"] if e["provider"] in ("mistral", "scaleway")]
    out = tmp_path / "eu-catalog.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


# -- tenants looked up on demand (SQLite mode=lookup; PostgreSQL: tests/e2e/test_tenants_postgres.py) --

def lookup_table(tmp_path: Path) -> str:
    import yaml

    from tests.fakes.tenant_tables import write_sqlite_tenants
    write_sqlite_tenants(tmp_path / "t.db", "tenants", yaml.safe_load(Path(TENANTS).read_text())["tenants"])
    return f"sqlite:///{tmp_path}/t.db?table=tenants&mode=lookup"


@pytest.mark.parametrize("opts,message", [
    ({"routecar_tenant_ttl": "0"}, "routecar_tenant_ttl must be a positive number"),
    ({"routecar_tenant_grace": "-1"}, "routecar_tenant_grace must be a non-negative number"),
    ({"routecar_tenant_grace": "soon"}, "routecar_tenant_grace must be a number of seconds"),
])
def test_bad_tenant_cache_option_fails_at_configure(tmp_path: Path, opts, message):
    router = Router()
    with taddons.context(router) as tctx:
        with pytest.raises(exceptions.OptionsError, match=message):
            tctx.configure(router, routecar_tenants=lookup_table(tmp_path), **opts)


def test_bad_lookup_mode_fails_at_configure(tmp_path: Path):
    router = Router()
    with taddons.context(router) as tctx:
        with pytest.raises(exceptions.OptionsError, match="mode must be 'table'"):
            tctx.configure(router, routecar_tenants=lookup_table(tmp_path).replace("lookup", "lazy"))


def test_looked_up_tenants_route_and_an_unreachable_one_is_503(tmp_path: Path):
    from routecar.errors import TenantSourceUnavailable

    class DownStore:
        label = "sqlite:///gone.db"

        def by_id(self, tenant_id: str) -> None:
            raise TenantSourceUnavailable(f"{self.label}: disk I/O error")

        by_key_hash = by_id

        def close(self) -> None:
            pass

    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            configured(tctx, router, routecar_tenants=lookup_table(tmp_path), routecar_tenant_ttl="60",
                       routecar_default_tenant="stark-vip")
            lookup = router.engine.tenants
            f = flow(headers=[("X-Tenant-Id", "initech-eu"), ("X-Route-Policy", json.dumps(
                {"rules": [["eq", "provider", "openai"]]}))])
            await router.request(f)  # found in the table: EU only, so openai is nothing
            assert f.response.status_code == 400 and error_of(f)["code"] == "no_candidate"
            assert f.metadata["routecar"].resolved.tenant == "initech-eu"
            lookup.store.close()
            lookup.store = DownStore()  # the database goes away; stark-vip (default) and initech-eu are cached
            for headers, tenant in (([("X-Tenant-Id", "umbrella-health")], "umbrella-health"),
                                    ([("Authorization", "Bearer sk-never-seen")], None)):
                f = flow(headers=headers)
                await router.request(f)
                assert f.response.status_code == 503, f.response.content
                err = error_of(f)
                assert err["code"] == "tenant_source_unavailable" and "gone.db" not in err["message"]
                assert f.response.headers["x-route-trace-id"].startswith("rt_")
                assert f.request.host == "api.openai.com"  # never rewritten towards a provider
                assert f.metadata["routecar"].resolved is None  # neither the default tenant nor ungoverned
            f = flow(headers=[("X-Tenant-Id", "initech-eu"), ("X-Route-Policy", json.dumps(
                {"rules": [["eq", "provider", "openai"]]}))])
            await router.request(f)  # still cached: served
            assert error_of(f)["code"] == "no_candidate"
            status = router.engine.healthz({})
            assert status["status"] == "degraded" and status["tenants"]["available"] is False


# -- fail closed --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,status,fmt", [
    ({"path": "/v1/embeddings"}, 404, "openai"),
    ({"path": "/v1/chat/completions/"}, 404, "openai"),
    ({"path": "/v1/messages/count_tokens", "host": "api.anthropic.com"}, 404, "anthropic"),
    ({"path": "/v1/chat/completions", "method": "PUT"}, 405, "openai"),
    ({"path": "/v1/models/gpt-4o", "method": "GET", "body": b""}, 404, "openai"),
    ({"sni": "api.anthropic.com"}, 400, "openai"),
])
def test_governed_calls_routecar_does_not_route_are_refused(kw, status, fmt):
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            configured(tctx, router)
            headers = [("Authorization", "Bearer sk-app-key"), ("X-Route-Policy", EU), ("Cookie", "session=s3cr3t")]
            f = flow(headers=headers, **kw)
            await router.request(f)
            assert f.response is not None and f.response.status_code == status
            body = json.loads(f.response.content)
            if fmt == "anthropic":
                assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
                assert body["error"]["code"] == "unsupported_endpoint"
            else:
                assert body["error"]["code"] == "unsupported_endpoint"
            assert f.response.headers["x-route-trace-id"].startswith("rt_")
            assert f.response.headers["x-route-fingerprint"].startswith("pol_")
            # the flow keeps none of the app's secrets
            assert f.request.headers["Cookie"] == "[redacted]" and f.request.headers["Authorization"] == "[redacted]"
            assert router.refused == 1
    run(body)


def test_ungoverned_calls_to_other_endpoints_are_untouched():
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            configured(tctx, router, routecar_tenants=TENANTS)
            for kw in ({"path": "/v1/embeddings"}, {"path": "/v1/chat/completions/"},
                       {"path": "/v1/models", "method": "GET", "body": b""}):
                f = flow(**kw)  # the app's own key, no routing header, not a tenant key
                await router.request(f)
                assert f.response is None and "routecar" not in f.metadata
                assert f.request.headers["Authorization"] == "Bearer sk-app-key"
    run(body)


@pytest.mark.parametrize("headers,code,status", [
    ([("X-Tenant-Id", "initech-eu"), ("x-tenant-id", "acme-free")], "invalid_request", 400),
    ([("X-Route-Policy", EU), ("X-Route-Policy", EU)], "invalid_request", 400),
    ([("X-Tenant-Id", "")], "invalid_request", 400),
    ([("X-Tenant-Id", "initech-eu"), ("Authorization", "Bearer demo-key-acme")], "tenant_conflict", 403),
])
def test_identity_errors(headers, code, status):
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            configured(tctx, router, routecar_tenants=TENANTS)
            for path in ("/v1/chat/completions", "/v1/embeddings"):
                f = flow(headers=headers, path=path)
                await router.request(f)
                assert f.response.status_code == status and error_of(f)["code"] == code
                assert f.response.headers["x-route-trace-id"].startswith("rt_")
    run(body)


def test_non_utf8_routing_header_is_400_not_500():
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            configured(tctx, router, routecar_tenants=TENANTS)
            f = flow(headers=[])
            f.request.headers.fields = ((b"X-Tenant-Id", b"initech-\xff\xfe"),)
            await router.request(f)
            assert f.response.status_code == 400
            assert error_of(f)["message"] == "X-Tenant-Id is not valid UTF-8"
            # a non-UTF-8 header routecar would forward is a 400 too (it could not be sent)
            f = flow(headers=[("X-Route-Policy", EU)])
            f.request.headers.fields += ((b"Anthropic-Beta", b"\xff"),)
            await router.request(f)
            assert f.response.status_code == 400 and "anthropic-beta" in error_of(f)["message"]
    run(body)


def test_passthrough_is_decided_on_headers_and_strips_routing_headers():
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            configured(tctx, router, routecar_passthrough="/v1/files")
            f = flow(path="/v1/files", method="GET", body=b"",
                     headers=[("Authorization", "Bearer sk-app-key"), ("X-Route-Policy", EU), ("x-tenant-id", "")])
            await router.requestheaders(f)
            assert f.response is None and f.request.stream is True   # the body is never held in the flow
            assert "x-route-policy" not in f.request.headers and "x-tenant-id" not in f.request.headers
            assert f.request.headers["Authorization"] == "Bearer sk-app-key"   # the app's own call
            state = f.metadata["routecar"]
            f.response = tutils.tresp()
            router.responseheaders(f)
            assert f.response.stream is True and f.response.headers["x-route-trace-id"] == state.trace_id
            assert f.request.headers["Authorization"] == "[redacted]"   # sent already: now out of the flow
            router.response(f)
            assert state.traced and state.outcome == "passthrough"
            # ungoverned: untouched; a spelling outside the prefix: not passthrough
            f = flow(path="/v1/files", method="GET", body=b"")
            await router.requestheaders(f)
            assert not f.request.stream and "routecar" not in f.metadata
            f = flow(path="/v1/files/../chat/completions", headers=[("X-Route-Policy", EU)])
            await router.requestheaders(f)
            assert "routecar" not in f.metadata
    run(body)


def test_passthrough_identity_error_answers_before_anything_is_sent():
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            configured(tctx, router, routecar_passthrough="/v1/files", routecar_tenants=TENANTS)
            f = flow(path="/v1/files", method="GET", body=b"", headers=[("X-Tenant-Id", "nobody")])
            await router.requestheaders(f)
            assert f.response.status_code == 403 and error_of(f)["code"] == "unknown_tenant"
            assert not f.request.stream
    run(body)


def test_admin_token_option():
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            configured(tctx, router, routecar_tenants=TENANTS, routecar_admin_token="tok-123456789")
            rank = json.dumps({"tenant": "initech-eu"}).encode()
            f = flow(host="routecar.local", path="/x/rank", port=80, scheme="http", body=rank, headers=[])
            await router.request(f)
            assert f.response.status_code == 401
            f = flow(host="routecar.local", path="/x/rank", port=80, scheme="http", body=rank,
                     headers=[("X-Routecar-Token", "tok-123456789")])
            await router.request(f)
            assert f.response.status_code == 200
    run(body)


def test_body_user_governs_unrouted_calls_only_when_in_the_order():
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            emb = json.dumps({"model": "text-embedding-3-small", "input": "hi", "user": "initech-eu"}).encode()
            configured(tctx, router, routecar_tenants=TENANTS, routecar_identify="header,body_user")
            f = flow(path="/v1/embeddings", body=emb)
            await router.request(f)
            assert f.response.status_code == 404 and error_of(f)["code"] == "unsupported_endpoint"
            assert f.metadata["routecar"].resolved.tenant == "initech-eu"
            configured(tctx, router, routecar_tenants=TENANTS, routecar_identify="header")
            f = flow(path="/v1/embeddings", body=emb)
            await router.request(f)
            assert f.response is None
    run(body)


@pytest.mark.parametrize("headers,proxy_user,code", [
    ([("X-Tenant-Id", "initech-eu"), ("Authorization", "Bearer demo-key-acme")], None, "tenant_conflict"),
    ([("Authorization", "Bearer demo-key-acme")], "stark-vip", "tenant_conflict"),
    ([("X-Tenant-Id", "acme-free"), ("Authorization", "Bearer demo-key-acme")], "acme-free", None),
])
def test_identities_must_agree_with_tenants_looked_up_on_demand(tmp_path: Path, headers, proxy_user, code):
    async def body() -> None:
        router = Router()
        with taddons.context(router) as tctx:
            configured(tctx, router, routecar_tenants=lookup_table(tmp_path))
            # (chat only when refused: this test runs no upstream session)
            for path in ("/v1/embeddings",) if code is None else ("/v1/chat/completions", "/v1/embeddings"):
                f = flow(headers=headers, path=path)
                if proxy_user:
                    f.metadata["proxyauth"] = (proxy_user, "x")
                await router.request(f)
                if code is None:  # they agree: governed as acme-free, and this endpoint is refused
                    assert error_of(f)["code"] == "unsupported_endpoint"
                    assert f.metadata["routecar"].resolved.tenant == "acme-free"
                else:
                    assert f.response.status_code == 403 and error_of(f)["code"] == code
            router.engine.tenants.close()
    run(body)
