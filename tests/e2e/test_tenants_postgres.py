"""Issue 16 end to end: `routecar run --tenants postgresql://…` against a real PostgreSQL server
started by the tests on loopback, with the official openai SDK. Tenants are looked up on demand
(by id and by API key), a change in the database is in effect within the ttl, and when the
server is stopped cached tenants are still served for the grace period while every other
governed call is refused with 503 tenant_source_unavailable (nothing forwarded, traced);
starting the server again recovers without a restart."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from typing import Any

import openai
import psycopg
import pytest
import yaml

from routecar.providers import DEFAULT_PROVIDERS
from tests.e2e.conftest import curl_json, sdk
from tests.e2e.test_tenants import _poll, _route
from tests.fakes.postgres import PgServer
from tests.fakes.tenant_tables import write_pg_tenants

TENANTS = yaml.safe_load((DEFAULT_PROVIDERS.parent / "tenants.yaml").read_text())["tenants"]
MSG = [{"role": "user", "content": "hi"}]
_names = itertools.count()


def table_url(postgres: PgServer, tenants: list[dict[str, Any]] = TENANTS) -> tuple[str, str]:
    name = f"e2e_tenants_{next(_names)}"
    write_pg_tenants(postgres.dsn, name, tenants)
    return name, postgres.url(name)


def _route_or_none(client: openai.OpenAI, tenant: str) -> tuple[str, str] | None:
    try:
        return _route(client, **{"X-Tenant-Id": tenant})
    except openai.PermissionDeniedError:  # still the cached miss
        return None


def forwarded(fake) -> int:
    return sum(len(fake.requests(n)) for n in fake.ports)


def test_lookup_by_header_and_api_key_and_changes_within_the_ttl(sidecar, fake, postgres: PgServer):
    name, url = table_url(postgres)
    side = sidecar("--tenants", url, "--tenant-ttl", "0.5")
    client = sdk(side)
    # the same routes as the YAML table gives (tests/e2e/test_tenants.py)
    assert _route(client, **{"X-Tenant-Id": "initech-eu"}) == ("mistral", "mistral-small-3")
    assert _route(sdk(side, api_key="demo-key-acme")) == ("groq", "openai/gpt-oss-120b")
    [rec] = fake.requests("groq")
    assert "demo-key-acme" not in json.dumps(rec)
    before = forwarded(fake)
    with pytest.raises(openai.PermissionDeniedError) as ei:
        client.chat.completions.create(model="x", messages=MSG, extra_headers={"X-Tenant-Id": "nobody"})
    assert ei.value.body["code"] == "unknown_tenant" and forwarded(fake) == before
    code, ranked = curl_json(side, "POST", "/x/rank", json.dumps({"tenant": "wayne-mixed"}))
    assert code == 200 and ranked["selected"] == "mistral/mistral-medium-3"
    # an UPDATE and an INSERT in the database are in effect within the ttl, no reload, no restart
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE {name} SET region = 'us' WHERE id = 'initech-eu'")  # type: ignore[arg-type]
        conn.execute(f"INSERT INTO {name} (id, region) VALUES ('nobody', 'eu')")  # type: ignore[arg-type]
    _poll(lambda: _route(client, **{"X-Tenant-Id": "initech-eu"}) == ("openai", "gpt-5.5-nano"),
          "initech-eu to move to region us")
    _poll(lambda: _route_or_none(client, "nobody") == ("mistral", "mistral-small-3"), "the new tenant to be found")
    code, health = curl_json(side, "GET", "/x/healthz")
    assert code == 200 and health["status"] == "ok"
    tenants = health["tenants"]
    assert tenants["mode"] == "lookup" and tenants["available"] is True and tenants["cached"] >= 2
    assert tenants["source"] == url


def test_outage_serves_cached_tenants_refuses_the_rest_and_recovers(sidecar, fake, postgres: PgServer):
    _, url = table_url(postgres)
    side = sidecar("--tenants", url, "--tenant-ttl", "0.2", "--tenant-grace", "600",
                   "--default-tenant", "stark-vip")
    client = sdk(side)
    assert _route(client, **{"X-Tenant-Id": "initech-eu"}) == ("mistral", "mistral-small-3")
    assert _route(client) == ("anthropic", "claude-sonnet-4-6")  # the default tenant, now cached
    postgres.stop()
    try:
        # a cached tenant is served past its ttl (the lookup fails, the grace period covers it)
        _poll(lambda: curl_json(side, "GET", "/x/healthz")[1]["status"] == "degraded", "healthz degraded")
        assert _route(client, **{"X-Tenant-Id": "initech-eu"}) == ("mistral", "mistral-small-3")
        before = forwarded(fake)
        # a tenant never looked up cannot be: 503, never the default tenant, never ungoverned
        for headers, key in (({"X-Tenant-Id": "globex-enterprise"}, None), ({}, "sk-unknown-key-0001")):
            app = sdk(side, api_key=key) if key else client
            with pytest.raises(openai.InternalServerError) as ei:
                app.chat.completions.create(model="gpt-4o", messages=MSG, extra_headers=headers or None)
            assert ei.value.status_code == 503
            assert ei.value.body["code"] == "tenant_source_unavailable"
            assert ei.value.response.headers["x-route-trace-id"].startswith("rt_")
            assert "127.0.0.1" not in ei.value.body["message"]  # the database's address stays inside
        assert forwarded(fake) == before
        code, health = curl_json(side, "GET", "/x/healthz")
        assert code == 200 and health["status"] == "degraded"
        assert health["tenants"]["available"] is False
        assert "tenant database unavailable" in health["tenants"]["last_error"]
        # /x/rank for an uncached tenant says so too, at once
        code, err = curl_json(side, "POST", "/x/rank", json.dumps({"tenant": "umbrella-health"}))
        assert code == 503 and err["error"]["code"] == "tenant_source_unavailable"
    finally:
        postgres.start()
    # the database is back: no restart, the refused tenant routes, healthz is ok again
    _poll(lambda: curl_json(side, "GET", "/x/healthz")[1]["status"] == "ok", "healthz ok again")
    assert _route(client, **{"X-Tenant-Id": "globex-enterprise"})[0] in ("openai", "anthropic", "azure")
    assert side.stop() == 0
    rows = side.trace_rows("select tenant, outcome from decisions where outcome = 'tenant_source_unavailable' "
                          "order by ts")
    assert rows == [("globex-enterprise", "tenant_source_unavailable"), (None, "tenant_source_unavailable")]


def test_check_and_compile_read_the_database(postgres: PgServer, capsys):
    from routecar.cli.main import main
    _, url = table_url(postgres)
    assert main(["check", "--tenants", url]) == 0
    out = capsys.readouterr().out
    assert f"tenants   {url}: connected, 6 tenant(s) read" in out and "every one compiles" in out
    assert "note" not in out  # the table has the recommended indexes

    assert main(["compile", "--tenant", "wayne-mixed", "--tenants", url, "--json"]) == 0
    from_pg = json.loads(capsys.readouterr().out)
    assert main(["compile", "--tenant", "wayne-mixed", "--json"]) == 0  # the shipped YAML
    assert json.loads(capsys.readouterr().out)["digest"] == from_pg["digest"]

    # a real process: it must also exit once done (the lookup's threads and pool never hold it)
    ranked = subprocess.run([sys.executable, "-m", "routecar.cli", "rank", "--tenant", "initech-eu", "--tenants",
                             url, "--json"], capture_output=True, text=True, timeout=60)
    assert ranked.returncode == 0, ranked.stderr
    assert json.loads(ranked.stdout)["selected"] == "mistral/mistral-small-3"

    bad_name, bad_url = table_url(postgres)
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {bad_name} (id, api_key_sha256) VALUES ('zz-broken', ARRAY['abc'])")  # type: ignore[arg-type]
    assert main(["check", "--tenants", bad_url]) == 2
    captured = capsys.readouterr()
    assert "1 problem(s)" in captured.err
    assert "(tenant 'zz-broken'): bad api_key_sha256 'abc'" in captured.err
    assert main(["check", "--tenants", postgres.url("no_such_table")]) == 2
    assert "no table 'no_such_table'" in capsys.readouterr().err
