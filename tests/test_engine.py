"""routing engine: resolve (tenant identification + request policy), decide, outbound, dry-run.

The engine is built the way the addon builds it, from the shipped catalog,
providers, tenants and rules, with a fake env and a fake clock: no proxy, no network.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from routecar.catalog import DEFAULT_CATALOG, load_catalog
from routecar.bodies import identity_body, parse_body
from routecar.engine import Engine, check_catalog_providers, client_api_key, client_api_keys
from routecar.errors import (BadRequest, ConfigError, InvalidPolicy, MissingProviderKey, NoCandidate, TenantConflict,
                             UnknownTenant)
from routecar.health import HealthTracker
from routecar.providers import DEFAULT_PROVIDERS, FORWARD_HEADERS, load_providers
from routecar.reloading import ReloadingSource
from routecar.tenants.rules import load_rules
from routecar.tenants.table import TenantSource

POLICIES = DEFAULT_PROVIDERS.parent
TENANTS = POLICIES / "tenants.yaml"
RULES = POLICIES / "rules.yaml"
ENV = {"OPENAI_API_KEY": "op-key-openai", "ANTHROPIC_API_KEY": "op-key-anthropic",
       "GEMINI_API_KEY": "op-key-google", "MISTRAL_API_KEY": "op-key-mistral",
       "AZURE_OPENAI_API_KEY": "op-key-azure", "GROQ_API_KEY": "op-key-groq",
       "DEEPSEEK_API_KEY": "op-key-deepseek", "SCALEWAY_API_KEY": "op-key-scaleway"}
BODY: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
EU = json.dumps({"rules": [["eq", "region", "eu"]]})


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


MakeEngine = Callable[..., Engine]


@pytest.fixture
def make_engine() -> MakeEngine:
    def make(*, tenants: str | Path | None = TENANTS, clock: Clock | None = None,
             env: dict[str, str] | None = None, **kw: Any) -> Engine:
        clock = clock or Clock()
        providers = load_providers(DEFAULT_PROVIDERS)
        catalog = ReloadingSource(str(DEFAULT_CATALOG),
                                  lambda s: check_catalog_providers(load_catalog(s), providers), clock)
        return Engine(catalog, providers, ENV if env is None else env, HealthTracker(clock),
                      tenants=TenantSource(tenants, clock=clock) if tenants else None,
                      rules=load_rules(RULES) if tenants else None, **kw)
    return make


@pytest.fixture
def engine(make_engine: MakeEngine) -> Engine:
    return make_engine()


def selected(engine: Engine, headers: dict[str, str], body: dict[str, Any] = BODY,
             proxy_user: str | None = None) -> str:
    r = engine.resolve(headers, body, proxy_user)
    assert r is not None
    return engine.decide(r.policy, body, r.tenant).selected.entry.id


# -- identification -------------------------------------------------------------------------

@pytest.mark.parametrize("headers,body,proxy_user,tenant,method", [
    ({"x-tenant-id": "initech-eu"}, BODY, None, "initech-eu", "header"),
    ({"x-tenant-id": "  initech-eu "}, BODY, None, "initech-eu", "header"),
    ({"authorization": "Bearer demo-key-acme"}, BODY, None, "acme-free", "api_key"),
    ({"authorization": "bearer demo-key-acme"}, BODY, None, "acme-free", "api_key"),
    ({"api-key": "demo-key-acme"}, BODY, None, "acme-free", "api_key"),
    ({}, BODY, "stark-vip", "stark-vip", "proxy_auth"),
    # methods that agree: the first in the order is reported
    ({"x-tenant-id": "acme-free", "authorization": "Bearer demo-key-acme"}, BODY, "acme-free",
     "acme-free", "header"),
    # an API key that is not in the table is not a claim: the next method decides
    ({"authorization": "Bearer sk-real-provider-key"}, BODY, "stark-vip", "stark-vip", "proxy_auth"),
])
def test_resolve_identifies_tenant(engine, headers, body, proxy_user, tenant, method):
    r = engine.resolve(headers, body, proxy_user)
    assert r is not None
    assert (r.tenant, r.method) == (tenant, method)
    assert r.request_policy is None
    assert r.policy is r.tenant_policy
    assert all(c.from_.startswith("rule:") for c in r.policy.clauses)


@pytest.mark.parametrize("tenant,entry", [
    ("acme-free", "groq/gpt-oss-120b"),
    ("globex-enterprise", "openai/gpt-5.5-nano"),
    ("initech-eu", "mistral/mistral-small-3"),
    ("umbrella-health", "mistral/mistral-small-3"),
    ("stark-vip", "anthropic/claude-sonnet-4-6"),
    ("wayne-mixed", "mistral/mistral-medium-3"),
])
def test_each_shipped_tenant_picks(engine, tenant, entry):
    assert selected(engine, {"x-tenant-id": tenant}) == entry


def test_library_default_identifies_by_body_user_the_sidecar_default_does_not(make_engine):
    from routecar.mitm.options import add_options

    body = {**BODY, "user": "initech-eu"}
    r = make_engine().resolve({}, body)  # the library Engine: every method, body_user included
    assert r is not None and (r.tenant, r.method) == ("initech-eu", "body_user")
    options: dict[str, Any] = {}
    add_options(type("Loader", (), {"add_option": lambda self, name, typ, default, help: options.update({name: default})})())
    sidecar_order = tuple(options["routecar_identify"].split(","))
    assert "body_user" not in sidecar_order  # opt-in in the sidecar: an end user writes the body
    assert make_engine(identify_order=sidecar_order).resolve({}, body) is None


def test_body_user_only_when_in_order(make_engine):
    body = {**BODY, "user": "initech-eu"}
    assert make_engine(identify_order=("header", "api_key", "proxy_auth")).resolve({}, body) is None
    r = make_engine(identify_order=("header", "body_user")).resolve({}, body)
    assert (r.tenant, r.method) == ("initech-eu", "body_user")
    # a non-string `user` is no claim
    assert make_engine(identify_order=("body_user",)).resolve({}, {**BODY, "user": 7}) is None


def test_proxy_user_ignored_when_not_in_order(make_engine):
    assert make_engine(identify_order=("header",)).resolve({}, BODY, "stark-vip") is None


@pytest.mark.parametrize("headers,proxy_user,method", [
    ({"x-tenant-id": "nobody"}, None, "header"),
    ({}, "nobody", "proxy_auth"),
])
def test_unknown_tenant(engine, headers, proxy_user, method):
    with pytest.raises(UnknownTenant) as ei:
        engine.resolve(headers, BODY, proxy_user)
    e = ei.value
    assert (e.status, e.code, e.tenant) == (403, "unknown_tenant", "nobody")
    assert e.message == f"unknown tenant 'nobody' (identified by {method})"


def test_unknown_tenant_falls_back_to_default_tenant(make_engine):
    engine = make_engine(default_tenant="initech-eu")
    r = engine.resolve({"x-tenant-id": "nobody"}, BODY)
    assert (r.tenant, r.method) == ("initech-eu", "default")
    r = engine.resolve({}, BODY)
    assert (r.tenant, r.method) == ("initech-eu", "default")
    # a known tenant is still itself
    assert engine.resolve({"x-tenant-id": "stark-vip"}, BODY).tenant == "stark-vip"


def test_default_tenant_must_exist(make_engine):
    with pytest.raises(ConfigError, match="default tenant 'nobody' is not in"):
        make_engine(default_tenant="nobody")


def test_tenant_header_without_table_is_unknown(make_engine):
    engine = make_engine(tenants=None)
    with pytest.raises(UnknownTenant) as ei:
        engine.resolve({"x-tenant-id": "initech-eu"}, BODY)
    assert "no tenant table is configured" in ei.value.message
    # an empty header is no claim, but the call carries a routing header: governed, and
    # with nothing to route it by, a 400 rather than a pass-through
    with pytest.raises(BadRequest, match="empty"):
        engine.resolve({"x-tenant-id": ""}, BODY)
    with pytest.raises(BadRequest, match="empty"):
        engine.resolve({"x-route-policy": ""}, BODY)


# -- tenant policy and request policy ---------------------------------------------------------

def test_header_policy_narrows_tenant(engine):
    narrow = json.dumps({"rules": [["eq", "provider", "azure"]]})
    r = engine.resolve({"x-tenant-id": "initech-eu", "x-route-policy": narrow}, BODY)
    assert r.tenant_policy is not None and r.request_policy is not None
    assert r.policy not in (r.tenant_policy, r.request_policy)
    assert engine.decide(r.policy, BODY).selected.entry.id == "azure/gpt-5.5-mini@eu"


@pytest.mark.parametrize("tenant,header", [
    ("initech-eu", ["eq", "provider", "openai"]),        # openai has no EU entry
    ("initech-eu", ["eq", "region", "us"]),
    ("globex-enterprise", ["eq", "provider", "mistral"]),  # not approved
    ("umbrella-health", ["eq", "provider", "groq"]),       # blocked
    ("acme-free", ["cmp", "bench_intelligence", "lt", 0.5]),  # under the floor
])
def test_header_cannot_loosen_tenant(engine, tenant, header):
    # alone, the header policy has candidates...
    alone = engine.resolve({"x-route-policy": json.dumps({"rules": [header]})}, BODY)
    assert engine.decide(alone.policy, BODY).ranked
    # ...combined with its tenant it has none
    r = engine.resolve({"x-tenant-id": tenant, "x-route-policy": json.dumps({"rules": [header]})}, BODY)
    with pytest.raises(NoCandidate) as ei:
        engine.decide(r.policy, BODY, r.tenant)
    assert (ei.value.status, ei.value.code, ei.value.tenant) == (400, "no_candidate", tenant)
    assert len(ei.value.dropped) == 19


@pytest.mark.parametrize("tenant,header_no_log,expected", [
    ("initech-eu", False, False),
    ("initech-eu", True, True),
    ("umbrella-health", False, True),   # the tenant's rule sets it; the header cannot unset it
    ("umbrella-health", True, True),
])
def test_no_log_from_either(engine, tenant, header_no_log, expected):
    pol = json.dumps({"rules": [], "no_log": header_no_log})
    r = engine.resolve({"x-tenant-id": tenant, "x-route-policy": pol}, BODY)
    assert r.policy.no_log is expected


def test_invalid_header_policy(engine):
    with pytest.raises(InvalidPolicy) as ei:
        engine.resolve({"x-tenant-id": "initech-eu", "x-route-policy": '{"rules": [["eq","regoin","eu"]]}'}, BODY)
    assert ei.value.errors[0]["path"] == "rules[0][1]"


def test_no_policy_no_tenant_passes_through(engine):
    assert engine.resolve({"authorization": "Bearer sk-unknown"}, BODY) is None


def test_default_policy_applies_only_without_policy_or_tenant(make_engine):
    engine = make_engine(default_policy=EU)
    r = engine.resolve({}, BODY)
    assert r is not None and r.tenant is None
    assert engine.decide(r.policy, BODY).selected.entry.id == "mistral/mistral-small-3"
    # a tenant's policy replaces the default rather than combining with it
    assert selected(engine, {"x-tenant-id": "stark-vip"}) == "anthropic/claude-sonnet-4-6"


def test_bad_default_policy_fails_at_start(make_engine):
    with pytest.raises(InvalidPolicy):
        make_engine(default_policy='{"rules": [["eq", "nope", 1]]}')


def test_policy_cache_hit_for_repeated_header(engine):
    a = engine.resolve({"x-route-policy": EU}, BODY)
    b = engine.resolve({"x-route-policy": EU}, BODY)
    assert a.policy is b.policy
    assert engine.policies().hits >= 1
    # the tenant's compiled policy and the combined policy are cached too
    h = {"x-tenant-id": "acme-free", "x-route-policy": EU}
    assert engine.resolve(h, BODY).policy is engine.resolve(h, BODY).policy
    assert engine.resolve(h, BODY).tenant_policy is engine.resolve({"x-tenant-id": "acme-free"}, BODY).policy


def test_tenant_table_reload_changes_routing(tmp_path, make_engine):
    path = tmp_path / "tenants.yaml"
    shutil.copy(TENANTS, path)
    clock = Clock()
    engine = make_engine(tenants=path, clock=clock)
    assert selected(engine, {"x-tenant-id": "initech-eu"}) == "mistral/mistral-small-3"
    path.write_text(path.read_text().replace("region: eu\n\n  # Sensitive", "region: us\n\n  # Sensitive"))
    clock.t += 5
    assert selected(engine, {"x-tenant-id": "initech-eu"}) == "openai/gpt-5.5-nano"
    path.write_text("tenants: [oops")
    clock.t += 5
    assert selected(engine, {"x-tenant-id": "initech-eu"}) == "openai/gpt-5.5-nano"
    assert "not valid YAML" in engine.tenants.last_error
    health = engine.healthz({})
    assert health["status"] == "degraded"
    assert "not valid YAML" in health["tenants"]["last_error"]


# -- outbound ---------------------------------------------------------------------------------

STRIPPED = ["Authorization", "api-key", "X-Api-Key", "Proxy-Authorization", "OpenAI-Organization",
            "OpenAI-Project", "x-goog-api-key", "Anthropic-Api-Key", "X-Route-Policy", "X-Tenant-Id",
            "Host", "Content-Length", "Transfer-Encoding", "Connection", "Accept-Encoding",
            # what an allowlist catches and a denylist missed: cookies, gateway keys, anything unknown
            "Cookie", "Ocp-Apim-Subscription-Key", "Helicone-Auth", "X-Custom", "User-Agent",
            "X-Stainless-Os", "Traceparent", "Idempotency-Key", "Content-Encoding", "Forwarded",
            "X-Forwarded-For", "X-Http-Method-Override"]


@pytest.mark.parametrize("entry_id,auth_name,auth_value,url", [
    ("mistral/mistral-small-3", "authorization", "Bearer op-key-mistral", "https://api.mistral.ai/v1/chat/completions"),
    ("azure/gpt-5.5@eu", "api-key", "op-key-azure",
     "https://routecar-eu.openai.azure.com/openai/v1/chat/completions"),
    ("groq/gpt-oss-120b", "authorization", "Bearer op-key-groq", "https://api.groq.com/openai/v1/chat/completions"),
])
def test_outbound_strips_credentials_and_injects_key(engine, entry_id, auth_name, auth_value, url):
    app = {name: f"app-value-{n}" for n, name in enumerate(STRIPPED)}
    app.update({"Content-Type": "text/plain", "Accept": "text/event-stream", "Anthropic-Version": "2023-06-01",
                "anthropic-beta": "tools-2024", "OpenAI-Beta": "assistants=v2"})
    lowered = {k.lower(): v for k, v in app.items()}   # what the addon passes
    entry = engine.catalog.get(entry_id)
    out = engine.outbound(entry, BODY, lowered)
    assert out.url == url
    credential_names = {"authorization", "api-key"}
    assert {k: v for k, v in out.headers.items() if k in credential_names} == {auth_name: auth_value}
    for name in STRIPPED:
        if name.lower() != auth_name:
            assert name.lower() not in out.headers
    assert not any(v.startswith("app-value-") for v in out.headers.values())
    # exactly the allowlist (minus the Messages protocol headers: these are chat providers),
    # routecar's content-type and one credential
    assert set(out.headers) == {h for h in FORWARD_HEADERS if not h.startswith("anthropic-")} | {
        "content-type", auth_name}
    assert out.headers["accept"] == "text/event-stream" and out.headers["openai-beta"] == "assistants=v2"
    assert out.headers["content-type"] == "application/json"
    sent = json.loads(out.body)
    assert sent == {**BODY, "model": entry.model}
    assert BODY["model"] == "gpt-4o"  # the caller's body is not mutated


def test_forward_headers_hold_no_credential_or_routing_header():
    assert not {"x-route-policy", "x-tenant-id", "authorization", "api-key", "x-api-key", "proxy-authorization",
                "cookie", "openai-organization", "openai-project"} & FORWARD_HEADERS


def test_missing_provider_key_names_env_var(make_engine):
    engine = make_engine(env={k: v for k, v in ENV.items() if k != "MISTRAL_API_KEY"})
    entry = engine.catalog.get("mistral/mistral-small-3")
    with pytest.raises(MissingProviderKey) as ei:
        engine.outbound(entry, BODY, {"authorization": "Bearer sk-app"})
    assert ei.value.env_var == "MISTRAL_API_KEY"
    assert "MISTRAL_API_KEY" in ei.value.message
    assert ei.value.status == 500 and ei.value.code == "provider_key_missing"
    # an empty variable is missing too
    engine = make_engine(env={**ENV, "MISTRAL_API_KEY": ""})
    with pytest.raises(MissingProviderKey):
        engine.outbound(entry, BODY, {})


def test_client_api_key():
    assert client_api_key({"authorization": "Bearer abc"}) == "abc"
    assert client_api_key({"authorization": "Basic abc"}) is None
    assert client_api_key({"x-api-key": "k"}) == "k"
    assert client_api_key({}) is None


@pytest.mark.parametrize("raw,message", [
    (b"", "request body is empty"),
    (b"{not json", "request body is not valid JSON"),
    (b"[1]", "request body must be a JSON object"),
    (b"[" * 100_000, "request body is not valid JSON"),
])
def test_parse_body_errors(raw, message):
    with pytest.raises(BadRequest, match=message):
        parse_body(raw)


def test_parse_body_size_limit():
    with pytest.raises(BadRequest, match="larger than 10 bytes") as ei:
        parse_body(b'{"model": "xxxxxxxx"}', max_body=10)
    assert (ei.value.status, ei.value.code) == (413, "request_too_large")


# -- dry-run endpoints ------------------------------------------------------------------------

def test_dry_run_fields_catalog_healthz(engine):
    status, body = engine.dry_run("GET", "/x/fields", None)
    assert status == 200 and "bench_intelligence" in {f["name"] for f in body["fields"]}
    status, body = engine.dry_run("GET", "/x/catalog?x=1", None)
    assert status == 200 and len(body["entries"]) == 19 and body["last_error"] is None
    status, body = engine.dry_run("GET", "/x/healthz/", None, lambda: {"requests": {"routed": 0}})
    assert status == 200
    assert body["status"] == "ok" and body["requests"] == {"routed": 0}
    assert body["tenants"]["count"] == 6 and body["tenants"]["last_error"] is None


@pytest.mark.parametrize("method,path,raw,status,code", [
    ("GET", "/x/nope", None, 404, "invalid_request"),
    ("POST", "/x/fields", None, 405, "invalid_request"),
    ("GET", "/x/rank", None, 405, "invalid_request"),
    ("POST", "/x/rank", b"{bad", 400, "invalid_request"),
    ("POST", "/x/rank", b"{}", 400, "invalid_policy"),
    ("POST", "/x/rank", b'{"policy": {"rules": [["eq", "nope", 1]]}}', 400, "invalid_policy"),
    # the status comes from the error's type, not its text (which may quote the caller)
    ("POST", "/x/rank", b'{"policy": {"rules": [["eq", "not allowed", 1]]}}', 400, "invalid_policy"),
    ("POST", "/x/rank", b'{"policy": {"rules": [["eq", "unknown endpoint", 1]]}}', 400, "invalid_policy"),
    ("POST", "/x/rank", b'{"tenant": "nobody"}', 403, "unknown_tenant"),
    ("POST", "/x/rank", b'{"request": 5, "tenant": "acme-free"}', 400, "invalid_request"),
])
def test_dry_run_errors(engine, method, path, raw, status, code):
    got, body = engine.dry_run(method, path, raw)
    assert (got, body["error"]["code"]) == (status, code)


def test_dry_run_rank_with_tenant(engine):
    status, body = engine.dry_run("POST", "/x/rank", json.dumps({"tenant": "wayne-mixed"}).encode())
    assert status == 200
    assert body["tenant"] == "wayne-mixed"
    assert body["selected"] == "mistral/mistral-medium-3"
    froms = {c["id"]: c["from"] for c in body["policy"]["clauses"]}
    assert froms == {"quality-floor": "rule:quality-floor", "approved-providers": "rule:approved-providers",
                     "data-residency": "rule:data-residency"}


def test_dry_run_rank_tenant_and_policy_combine(engine):
    payload = {"tenant": "initech-eu", "policy": {"rules": [["eq", "provider", "openai"]]}}
    status, body = engine.dry_run("POST", "/x/rank", json.dumps(payload).encode())
    assert status == 200
    assert body["selected"] is None and body["ranked"] == []
    assert body["warnings"] == []


def test_dry_run_rank_warns_about_values_no_entry_has(engine):
    payload = {"policy": {"rules": [["eq", "region", "EU"]]}}
    status, body = engine.dry_run("POST", "/x/rank", json.dumps(payload).encode())
    assert (status, body["selected"]) == (200, None)
    assert body["warnings"] == [{"path": "rules[0][2]",
                                 "message": "no catalog entry has region 'EU' (did you mean 'eu'?); known: cn, eu, us"}]


def test_dry_run_rank_tenant_without_table(make_engine):
    status, body = make_engine(tenants=None).dry_run("POST", "/x/rank", b'{"tenant": "acme-free"}')
    assert (status, body["error"]["code"]) == (403, "unknown_tenant")


# -- regressions ------------------------------------------------------------------------------

def test_default_tenant_removed_by_reload_is_unknown_not_passthrough(tmp_path, make_engine):
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  - {id: eu, region: eu}\n  - {id: other, region: us}\n")
    clock = Clock()
    engine = make_engine(tenants=path, clock=clock, default_tenant="eu")
    assert engine.resolve({}, BODY).tenant == "eu"
    path.write_text("tenants:\n  - {id: other, region: us}\n")
    clock.t += 5
    # Passing the call through unrouted would silently drop the tenant's rules.
    with pytest.raises(UnknownTenant) as ei:
        engine.resolve({}, BODY)
    assert ei.value.tenant == "eu" and "default" in ei.value.message


def test_tenant_that_cannot_compile_fails_at_start(tmp_path, make_engine):
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  - {id: ok, region: eu}\n  - {id: bad, quality_floor: high}\n")
    with pytest.raises(ConfigError, match="bad"):
        make_engine(tenants=path)


def test_outbound_strips_mixed_case_names_too(engine):
    entry = engine.catalog.get("mistral/mistral-small-3")
    out = engine.outbound(entry, BODY, {"Authorization": "Bearer sk-app", "X-Tenant-Id": "t",
                                        "X-Route-Policy": EU, "Api-Key": "k", "X-Custom": "kept"})
    assert out.headers == {"authorization": "Bearer op-key-mistral", "content-type": "application/json"}


def test_reload_between_identify_and_compile_does_not_pin_a_stale_policy(make_engine):
    """The table may reload between identifying a tenant and compiling its policy; the
    policy compiled from the old tenant must not be cached for the new table."""
    from routecar.tenants.table import Tenant, TenantTable

    v1 = TenantTable([Tenant("t", {"region": "eu"})])
    v2 = TenantTable([Tenant("t", {"region": "us"})])

    class Flipping:  # returns v1 once, then v2: a reload right after identification
        source, last_error = "<flipping>", None

        def __init__(self) -> None:
            self.calls = 0

        def current(self) -> TenantTable:
            self.calls += 1
            return v1 if self.calls <= 1 else v2

    engine = make_engine(tenants=None)
    engine.tenants, engine.rules = Flipping(), load_rules(RULES)
    assert selected(engine, {"x-tenant-id": "t"}) == "mistral/mistral-small-3"   # v1's tenant
    assert selected(engine, {"x-tenant-id": "t"}) == "openai/gpt-5.5-nano"       # v2's tenant


def test_reloaded_table_with_a_tenant_that_cannot_compile_keeps_the_last_good_one(tmp_path, make_engine):
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  - {id: eu, region: eu}\n")
    clock = Clock()
    engine = make_engine(tenants=path, clock=clock)
    assert selected(engine, {"x-tenant-id": "eu"}) == "mistral/mistral-small-3"
    path.write_text("tenants:\n  - {id: eu, region: us}\n  - {id: vip, quality_floor: high}\n")
    clock.t += 5
    # The new table is refused as a whole: 'eu' still routes by the last good one.
    assert selected(engine, {"x-tenant-id": "eu"}) == "mistral/mistral-small-3"
    assert "1 tenant(s) do not compile" in engine.tenants.last_error
    assert "keeping tenant table" in engine.tenants.last_error


# -- fail closed: identity, origins, the operator token ---------------------------------------

@pytest.mark.parametrize("headers,proxy_user", [
    ({"x-tenant-id": "initech-eu", "authorization": "Bearer demo-key-acme"}, None),   # key + header
    ({"authorization": "Bearer demo-key-acme"}, "stark-vip"),                          # key + proxy user
    ({"x-tenant-id": "initech-eu"}, "stark-vip"),                                     # header + proxy user
    ({"x-tenant-id": "nobody", "api-key": "demo-key-acme"}, None),                     # unknown + known
])
def test_identities_that_disagree_are_refused(engine, headers, proxy_user):
    with pytest.raises(TenantConflict) as ei:
        engine.resolve(headers, BODY, proxy_user)
    assert (ei.value.status, ei.value.code) == (403, "tenant_conflict")


def test_a_second_credential_header_cannot_hide_a_tenant_key(make_engine):
    engine = make_engine(identify_order=("api_key",))
    pairs = [("authorization", "Bearer sk-some-real-key"), ("x-api-key", "demo-key-acme")]
    r = engine.resolve(dict(pairs), BODY, None, client_api_keys(pairs))
    assert (r.tenant, r.method) == ("acme-free", "api_key")
    # two Authorization headers: the dict keeps the last, the pairs keep both
    pairs = [("authorization", "Bearer demo-key-acme"), ("authorization", "Bearer sk-other")]
    assert client_api_keys(pairs) == ["demo-key-acme", "sk-other"]
    assert engine.resolve(dict(pairs), BODY, None, client_api_keys(pairs)).tenant == "acme-free"


@pytest.mark.parametrize("origin", ["rule:data-residency", "RULE:anything", " rule:x"])
def test_request_clause_cannot_claim_a_tenant_rule(engine, origin):
    pol = json.dumps({"rules": [{"id": "eu", "rule": ["eq", "region", "eu"], "from": origin}]})
    with pytest.raises(InvalidPolicy) as ei:
        engine.resolve({"x-route-policy": pol}, BODY)
    assert ei.value.errors[0]["path"] == "rules[0].from"
    assert "claims a tenant rule" in ei.value.errors[0]["message"]
    status, body = engine.dry_run("POST", "/x/rank", json.dumps({"policy": json.loads(pol)}).encode())
    assert status == 400 and body["error"]["code"] == "invalid_policy"
    # an honest origin is fine
    ok = json.dumps({"rules": [{"rule": ["eq", "region", "eu"], "from": "app:checkout"}]})
    assert engine.resolve({"x-route-policy": ok}, BODY).request_policy.clauses[0].from_ == "app:checkout"


def test_admin_token_guards_tenant_rank_and_health_details(make_engine):
    engine = make_engine(admin_token="op-admin-token-123")
    tenant_rank = json.dumps({"tenant": "wayne-mixed"}).encode()
    for headers in ({}, {"authorization": "Bearer wrong"}, {"x-routecar-token": "op-admin-token-12"},
                    {"x-routecar-token": "op-admin-token-1234"}, {"authorization": "op-admin-token-123"}):
        status, body = engine.dry_run("POST", "/x/rank", tenant_rank, headers=headers)
        assert (status, body["error"]["code"]) == (401, "admin_token_required"), headers
        status, body = engine.dry_run("GET", "/x/healthz", None, headers=headers)
        assert (status, body) == (200, {"status": "ok"}), headers
    for headers in ({"authorization": "Bearer op-admin-token-123"}, {"x-routecar-token": "op-admin-token-123"}):
        status, body = engine.dry_run("POST", "/x/rank", tenant_rank, headers=headers)
        assert status == 200 and body["tenant"] == "wayne-mixed"
        status, body = engine.dry_run("GET", "/x/healthz", None, headers=headers)
        assert status == 200 and "catalog" in body
    # a policy-only rank names no tenant: open
    status, body = engine.dry_run("POST", "/x/rank", json.dumps({"policy": json.loads(EU)}).encode())
    assert status == 200
    # no token configured: everything open, as before
    assert make_engine().dry_run("POST", "/x/rank", tenant_rank)[0] == 200


def test_identity_body_is_lenient(make_engine):
    assert identity_body(b'{"user": "u"}') == {"user": "u"}
    for raw in (None, b"", b"\x00\xff", b"[1]", b"{nope", b"x" * 10, b"[" * 100000):
        assert identity_body(raw) == {}
    assert identity_body(b'{"user": "u"}', max_body=4) == {}


def test_operator_keys_are_the_set_ones(make_engine):
    engine = make_engine(env={"OPENAI_API_KEY": "op-key-openai", "MISTRAL_API_KEY": ""})
    assert engine.operator_keys() == ("op-key-openai",)
