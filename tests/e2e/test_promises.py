"""What the docs promise, checked through the real proxy (issue 11): the body size limit, body-user
identification being opt-in, a remote catalog keeping its last good version, trace retention,
`--traces off`, `routecar env` driving an unmodified app, and stock `mitmdump -s` streaming with
fallback."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from routecar.catalog import DEFAULT_CATALOG
from routecar.providers import DEFAULT_PROVIDERS
from routecar.traces.record import TraceRecord
from routecar.traces.store import TraceStore
from tests.e2e.conftest import curl_json, sdk
from tests.fakes import ProxyNotReady

EU = json.dumps({"rules": [["eq", "region", "eu"]]})
MSG = [{"role": "user", "content": "hi"}]
TENANTS = DEFAULT_PROVIDERS.parent / "tenants.yaml"


def poll(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Call `check` until it returns something truthy, pacing the polls; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; last: {got!r}")
        time.sleep(0.1)


def routed(side, policy: str = EU, **kw: Any):
    return sdk(side).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=kw.pop("messages", MSG), extra_headers={"X-Route-Policy": policy}, **kw)


def trace_rows(side, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    try:
        return side.trace_rows(sql, *params)
    except sqlite3.OperationalError:  # not created yet
        return []


def contacted(fake) -> list[str]:
    return [n for n in fake.ports if fake.requests(n)]


# -- routecar_max_body ----------------------------------------------------------------------

def test_body_over_routecar_max_body_is_a_traced_413(sidecar, fake):
    side = sidecar("--set", "routecar_max_body=2000")
    with pytest.raises(openai.APIStatusError) as ei:
        routed(side, messages=[{"role": "user", "content": "x" * 5000}])
    assert ei.value.status_code == 413
    assert ei.value.body["code"] == "request_too_large" and "routecar_max_body" in ei.value.body["message"]
    trace_id = ei.value.response.headers["x-route-trace-id"]
    assert contacted(fake) == []
    assert routed(side).headers["x-route-model"] == "mistral-small-3"  # a small body is routed
    rows = poll(lambda: trace_rows(side, "select status, outcome from decisions where trace_id = ?", trace_id),
                "the 413's trace")
    assert rows == [(413, "request_too_large")]


# -- body user ------------------------------------------------------------------------------

def test_body_user_identifies_a_tenant_only_when_enabled(sidecar, fake):
    # Reverse mode with a dummy target: a call routecar does not govern goes to the (down)
    # target unchanged, so it fails there instead of reaching any provider.
    default = sidecar("--tenants", str(TENANTS), mode="reverse")
    with pytest.raises(openai.APIStatusError) as ei:
        sdk(default).chat.completions.create(model="gpt-4o", messages=MSG, user="initech-eu")
    assert ei.value.status_code == 502 and "x-route-trace-id" not in ei.value.response.headers
    assert contacted(fake) == []
    enabled = sidecar("--tenants", str(TENANTS), "--identify", "header,body_user", mode="reverse")
    raw = sdk(enabled).chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG, user="initech-eu")
    assert (raw.headers["x-route-provider"], raw.headers["x-route-model"]) == ("mistral", "mistral-small-3")
    assert enabled.stop() == 0
    assert enabled.trace_rows("select tenant, chosen_entry from decisions") == [
        ("initech-eu", "mistral/mistral-small-3")]


# -- a remote catalog -----------------------------------------------------------------------

class CatalogServer:
    """A loopback HTTP server for one catalog document; `body = None` answers 500."""

    def __init__(self, body: bytes) -> None:
        self.body: bytes | None = body
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.hits += 1
                body = outer.body
                self.send_response(200 if body is not None else 500)
                self.send_header("content-length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/catalog.yaml"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def catalog_server() -> Iterator[CatalogServer]:
    server = CatalogServer(DEFAULT_CATALOG.read_bytes())
    yield server
    server.close()


def test_remote_catalog_keeps_the_last_good_version(sidecar, fake, catalog_server):
    import yaml

    side = sidecar("--catalog", catalog_server.url, "--set", "routecar_catalog_ttl=0.5")
    assert routed(side).headers["x-route-model"] == "mistral-small-3"
    # The central catalog drops the cheapest EU entries: the sidecar follows.
    shipped = yaml.safe_load(DEFAULT_CATALOG.read_text())
    shipped["entries"] = [e for e in shipped["entries"] if not e["id"].endswith("mistral-small-3")]
    catalog_server.body = yaml.safe_dump(shipped).encode()
    poll(lambda: routed(side).headers["x-route-model"] == "llama-3.3-70b-instruct", "the new catalog")
    good = curl_json(side, "GET", "/x/catalog")[1]["version"]
    # A broken document, then a failing server: the last good version stays in service, and says so.
    # (Reloads are checked when the catalog is used: each poll asks /x/healthz.)
    for broken, error in ((b"entries: [{id: broken}]\n", "invalid catalog"), (None, "HTTP Error 500")):
        catalog_server.body = broken
        health = poll(lambda: (h := curl_json(side, "GET", "/x/healthz")[1])["catalog"]["last_error"]
                      and error in h["catalog"]["last_error"] and h, f"the sidecar to report {error!r}")
        assert health["status"] == "degraded"
        assert "keeping the last good version" in health["catalog"]["last_error"]
        assert health["catalog"]["version"] == good
        assert routed(side).headers["x-route-model"] == "llama-3.3-70b-instruct"


def test_bad_catalog_ttl_fails_at_start(sidecar):
    with pytest.raises(ProxyNotReady) as ei:
        sidecar("--set", "routecar_catalog_ttl=soon")
    assert "routecar_catalog_ttl must be a number of seconds" in str(ei.value)


# -- trace retention and --traces off -------------------------------------------------------

def test_trace_retention_options_prune_the_store(sidecar, fake, tmp_path):
    now = time.time()
    old = tmp_path / "traces0.db"  # the path the first sidecar of this test writes
    with TraceStore(old) as store:
        store.write([TraceRecord(f"rt_week_old_{i}", now - 8 * 86400) for i in range(3)]
                    + [TraceRecord(f"rt_recent_{i}", now - 60 + i) for i in range(6)])
    side = sidecar("--set", "routecar_traces_max_age=7d", "--set", "routecar_traces_max_rows=4")
    # The writer prunes at start: the week-old traces go (max age), then all but the newest 4.
    poll(lambda: [r[0] for r in trace_rows(side, "select trace_id from decisions order by ts")]
         == [f"rt_recent_{i}" for i in range(2, 6)], "pruning at start")
    trace_id = routed(side).headers["x-route-trace-id"]
    assert side.stop() == 0
    assert side.trace_rows("select count(*) from decisions where trace_id = ?", trace_id) == [(1,)]


def test_bad_retention_option_fails_at_start(sidecar):
    with pytest.raises(ProxyNotReady) as ei:
        sidecar("--set", "routecar_traces_max_age=soon")
    assert "routecar_traces_max_age: invalid duration 'soon'" in str(ei.value)


def test_traces_off_writes_nothing(sidecar, fake, tmp_path):
    home = tmp_path / "fresh-home"  # where the default trace DB would go
    side = sidecar("--traces", "off", mode="reverse", env={"ROUTECAR_HOME": str(home)})
    raw = sdk(side).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MSG, extra_headers={"X-Route-Policy": EU})
    assert raw.headers["x-route-trace-id"].startswith("rt_")  # still answered with its id
    with pytest.raises(openai.BadRequestError):
        sdk(side).chat.completions.create(model="x", messages=MSG,
                                          extra_headers={"X-Route-Policy": '{"rules": [["eq", "nope", 1]]}'})
    assert curl_json(side, "GET", "/x/healthz")[1]["traces"] is None
    assert side.stop() == 0
    written = [p for p in tmp_path.rglob("*") if p.suffix in (".db", ".db-wal") or p.name.startswith("traces")]
    assert written == []


# -- routecar env ---------------------------------------------------------------------------

APP = textwrap.dedent("""
    import json, openai
    raw = openai.OpenAI(max_retries=0).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    print(json.dumps({"content": raw.parse().choices[0].message.content,
                      "model": raw.headers.get("x-route-model")}))
""")


def test_routecar_env_is_all_an_unmodified_app_needs(sidecar, fake, routecar_home, tmp_path):
    side = sidecar("--default-policy", EU)
    (tmp_path / "app.py").write_text(APP)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "ROUTECAR_HOME": str(routecar_home),
           "OPENAI_API_KEY": "sk-app-own-key-1234567890"}
    routecar = [sys.executable, "-m", "routecar.cli"]
    script = f'eval "$({" ".join(routecar)} env --proxy {side.url})" && exec {sys.executable} app.py'
    out = subprocess.run(["sh", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr + side.log()
    assert json.loads(out.stdout) == {"content": "[fake:mistral] model=mistral-small-3 ok",
                                      "model": "mistral-small-3"}
    [rec] = fake.requests("mistral")
    assert "sk-app-own-key" not in json.dumps(rec)  # the operator's key went instead


# -- stock mitmdump -s ----------------------------------------------------------------------

def test_stock_mitmdump_streams_with_fallback(sidecar, fake):
    side = sidecar(stock=True)
    fake.set_script("mistral", [{"status": 500}])
    fake.set_script("scaleway", [{"chunks": 4, "chunk_delay": 0.3}])
    t0 = time.monotonic()
    stream = sdk(side).chat.completions.create(model="gpt-4o", stream=True, messages=MSG,
                                               extra_headers={"X-Route-Policy": EU})
    arrivals, text = [], ""
    for chunk in stream:
        arrivals.append(time.monotonic() - t0)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    assert text == "[fake:scaleway] model=mistral-small-3.2-24b-instruct ok"
    assert stream.response.headers["x-route-attempts"] == "2"
    assert stream.response.headers["x-route-provider"] == "scaleway"
    assert arrivals[-1] - arrivals[0] >= 0.3  # chunk by chunk: a buffered answer has a spread of ~0
    assert contacted(fake) == ["mistral", "scaleway"]
    trace_id = stream.response.headers["x-route-trace-id"]
    rows = poll(lambda: trace_rows(side, "select outcome, stream, attempts_count, chosen_entry from decisions "
                                         "where trace_id = ?", trace_id), "the stream's trace")
    assert rows == [("ok", 1, 2, "scaleway/mistral-small-3")]
