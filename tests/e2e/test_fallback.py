"""Issue 4 end to end: fallback within the policy, live health and safe streaming,
through the real `routecar run` with the official openai SDK and loopback fakes.

The EU policy ranks mistral/mistral-small-3, scaleway/mistral-small-3,
scaleway/llama-3.3-70b, azure/gpt-5.5-mini@eu, ... on the default catalog. Each
test gets its own sidecar (about a second to start) so live health never leaks
from one test into the next.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import openai
import pytest

from tests.e2e.conftest import curl_json, sdk, trace
from tests.fakes.config import write_loopback_providers

EU = json.dumps({"rules": [["eq", "region", "eu"]]})
MSG = [{"role": "user", "content": "hi"}]
# mistral's three entries first, then azure: proves a skipped provider stays skipped.
MISTRAL_FIRST = json.dumps({"rules": [["in", "provider", ["mistral", "azure"]]],
                            "rank": [["desc", "provider"], ["asc", "est_cost"]]})


def call(side, policy: str = EU, **kw: Any):
    """A non-streaming call; returns the SDK's raw response (headers + parsed body)."""
    return sdk(side).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MSG, extra_headers={"X-Route-Policy": policy}, **kw)


def contacted(fake) -> dict[str, list[str]]:
    return {n: [r["body"]["model"] for r in fake.requests(n)] for n in fake.ports if fake.requests(n)}


# -- fallback on provider errors ------------------------------------------------------------

@pytest.mark.parametrize("status", [500, 502, 503, 504, 529, 429])
def test_retryable_status_answered_by_next_entry(sidecar, fake, status):
    side = sidecar()
    fake.set_script("mistral", [{"status": status}])
    raw = call(side)
    assert raw.parse().choices[0].message.content.startswith("[fake:scaleway]")
    assert (raw.headers["x-route-attempts"], raw.headers["x-route-provider"]) == ("2", "scaleway")
    t = trace(side, raw.headers["x-route-trace-id"])
    assert (t["outcome"], t["attempts_count"], t["chosen_entry"]) == ("ok", 2, "scaleway/mistral-small-3")
    assert [(a["entry_id"], a["status"]) for a in t["attempts"]] == [
        ("mistral/mistral-small-3", status), ("scaleway/mistral-small-3", 200)]


def test_retry_after_short_waits_long_moves_on(sidecar, fake):
    side = sidecar()
    scaleway_only = json.dumps({"rules": [["eq", "provider", "scaleway"]]})
    gaps = []
    for retry_after in ("1", "3600"):
        fake.reset()
        fake.set_script("scaleway", [{"status": 429, "retry_after": retry_after, "times": 1}])
        raw = call(side, scaleway_only)
        assert raw.headers["x-route-attempts"] == "2"
        first, second = fake.requests("scaleway")
        gaps.append(second["time"] - first["time"])
    assert gaps[0] >= 0.9      # waited for the same provider's Retry-After
    assert gaps[1] < gaps[0]   # an hour is not worth waiting for: moved on at once


def test_connect_refused_moves_on(sidecar, fake, loopback, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]   # closed again before use: connections are refused
    providers, _ = write_loopback_providers(
        lambda n: f"http://127.0.0.1:{dead}/v1" if n == "mistral" else fake.url(n), tmp_path / "providers.yaml")
    side = sidecar("--providers", str(providers))
    raw = call(side)
    assert (raw.headers["x-route-attempts"], raw.headers["x-route-provider"]) == ("2", "scaleway")
    t = trace(side, raw.headers["x-route-trace-id"])
    assert [(a["status"], a["error_class"]) for a in t["attempts"]] == [(None, "connect_error"), (200, "ok")]


def test_first_byte_timeout_moves_on(sidecar, fake):
    side = sidecar("--set", "routecar_first_byte_timeout=1")
    fake.set_script("mistral", [{"delay": 4}])
    raw = call(side)
    assert (raw.headers["x-route-attempts"], raw.headers["x-route-provider"]) == ("2", "scaleway")
    t = trace(side, raw.headers["x-route-trace-id"])
    assert [a["error_class"] for a in t["attempts"]] == ["timeout", "ok"]


@pytest.mark.parametrize("status", [401, 403])
def test_auth_error_skips_every_entry_of_the_provider(sidecar, fake, status):
    side = sidecar()
    fake.set_script("mistral", [{"status": status}])
    raw = call(side, MISTRAL_FIRST)
    assert (raw.headers["x-route-attempts"], raw.headers["x-route-provider"]) == ("2", "azure")
    assert contacted(fake) == {"mistral": ["mistral-small-3"], "azure": ["gpt-5.5-mini"]}


def test_context_length_goes_to_a_bigger_window_only(sidecar, fake):
    side = sidecar()
    fake.set_script("mistral", [{"status": 400}])   # the fake's 400: context_length_exceeded
    raw = call(side)
    assert (raw.headers["x-route-attempts"], raw.headers["x-route-provider"]) == ("2", "azure")
    # scaleway's 128k windows are no bigger than mistral's: never tried.
    assert contacted(fake) == {"mistral": ["mistral-small-3"], "azure": ["gpt-5.5-mini"]}


def test_other_client_error_is_returned_as_is(sidecar, fake):
    side = sidecar()
    body = {"error": {"message": "temperature must be <= 2", "type": "invalid_request_error",
                      "code": "invalid_value", "param": "temperature"}}
    fake.set_script("mistral", [{"status": 400, "body": body}])
    with pytest.raises(openai.BadRequestError) as ei:
        call(side, temperature=1.5)
    assert ei.value.status_code == 400
    assert ei.value.body == body["error"]
    assert ei.value.response.headers["x-route-attempts"] == "1"
    assert contacted(fake) == {"mistral": ["mistral-small-3"]}


def test_all_failed_is_one_502_listing_each_attempt(sidecar, fake):
    side = sidecar()
    for name in fake.ports:
        fake.set_script(name, [{"status": 503}])
    policy = json.dumps({"rules": [["eq", "provider", "mistral"]], "fallback": {"max_attempts": 5}})
    with pytest.raises(openai.APIStatusError) as ei:
        call(side, policy)
    err = ei.value
    assert err.status_code == 502 and err.body["code"] == "upstream_failed"
    assert err.response.headers["x-route-trace-id"].startswith("rt_")
    assert err.response.headers["x-route-attempts"] == "3"
    assert [(a["entry"], a["status"], a["error_class"]) for a in err.body["attempts"]] == [
        ("mistral/mistral-small-3", 503, "server_error"), ("mistral/mistral-medium-3", 503, "server_error"),
        ("mistral/mistral-large-3", 503, "server_error")]
    assert all(a["duration_ms"] > 0 for a in err.body["attempts"])
    # The policy said mistral only: every other provider stayed untouched.
    assert list(contacted(fake)) == ["mistral"]
    t = trace(side, err.response.headers["x-route-trace-id"])
    assert (t["status"], t["outcome"], t["attempts_count"]) == (502, "upstream_failed", 3)


# -- streaming ------------------------------------------------------------------------------

def stream(side, policy: str = EU):
    return sdk(side).chat.completions.create(model="gpt-4o", stream=True, messages=MSG,
                                             extra_headers={"X-Route-Policy": policy})


def test_stream_fallback_before_first_byte_then_chunk_by_chunk(sidecar, fake):
    side = sidecar()
    fake.set_script("mistral", [{"status": 500}])
    fake.set_script("scaleway", [{"chunks": 4, "chunk_delay": 0.4}])
    t0 = time.monotonic()
    arrivals, text = [], ""
    for chunk in stream(side):
        arrivals.append(time.monotonic() - t0)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    assert text == "[fake:scaleway] model=mistral-small-3.2-24b-instruct ok"
    assert arrivals[0] < arrivals[-1] - 0.8   # streamed, not buffered
    assert list(contacted(fake)) == ["mistral", "scaleway"]


def test_stream_cut_after_bytes_raises_in_the_sdk(sidecar, fake):
    side = sidecar()
    # chunk_delay: the chunks before the cut are read before the connection is reset
    # (a reset may discard data the reader has not taken yet).
    fake.set_script("mistral", [{"chunks": 5, "cut_after_chunks": 3, "chunk_delay": 0.2}])
    s = stream(side)
    text = ""
    with pytest.raises(openai.APIError) as ei:
        for chunk in s:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
    assert "stream broke" in ei.value.message
    assert text and not text.endswith("ok")   # a part arrived, the rest did not
    t = trace(side, s.response.headers["x-route-trace-id"])
    assert t["outcome"] == "stream_broken"
    assert contacted(fake) == {"mistral": ["mistral-small-3"]}   # bytes were sent: no fallback
    # The break counts against the entry in live health.
    code, health = curl_json(side, "GET", "/x/healthz")
    assert health["health"]["mistral/mistral-small-3"]["consecutive_failures"] == 1


def test_client_gone_mid_stream(sidecar, fake):
    side = sidecar()
    fake.set_script("mistral", [{"chunks": 100, "chunk_delay": 0.1, "times": 1}])
    s = stream(side)
    next(iter(s))
    s.close()   # the app hangs up mid-stream
    t = trace(side, s.response.headers["x-route-trace-id"])
    assert t["outcome"] == "client_gone"
    # The 10 s upstream stream was abandoned early, and the proxy still answers.
    assert call(side).headers["x-route-attempts"] == "1"


# -- live health ----------------------------------------------------------------------------

def test_repeated_failures_cool_an_entry_down(sidecar, fake):
    side = sidecar()
    fake.set_script("mistral", [{"status": 500, "match": {"model": "mistral-small-3"}}])
    for _ in range(3):
        assert call(side).headers["x-route-attempts"] == "2"
    code, health = curl_json(side, "GET", "/x/healthz")
    assert code == 200
    cooled = health["health"]["mistral/mistral-small-3"]
    assert cooled["healthy"] is False and cooled["state"] == "open" and cooled["consecutive_failures"] == 3
    assert health["health"]["scaleway/mistral-small-3"]["healthy"] is True

    fake.clear_requests()
    raw = call(side)   # ranked after the healthy entries: not tried first any more
    assert (raw.headers["x-route-attempts"], raw.headers["x-route-provider"]) == ("1", "scaleway")
    assert fake.requests("mistral") == []
    code, ranked = curl_json(side, "POST", "/x/rank", json.dumps({"policy": json.loads(EU)}))
    assert ranked["selected"] == "scaleway/mistral-small-3"
    assert "mistral/mistral-small-3" in [r["id"] for r in ranked["ranked"]]   # still a last resort

    # The `healthy` rule field drops it altogether.
    only_healthy = json.dumps({"rules": [["eq", "provider", "mistral"], ["eq", "healthy", True]]})
    raw = call(side, only_healthy)
    assert raw.parse().model == "mistral-medium-3"
    code, ranked = curl_json(side, "POST", "/x/rank", json.dumps({"policy": json.loads(only_healthy)}))
    dropped = {c["id"]: c["failed"] for c in ranked["candidates"] if not c["passed"]}
    assert dropped["mistral/mistral-small-3"]["field"] == "healthy"


def test_bad_timeout_option_fails_at_start(sidecar):
    from tests.fakes import ProxyNotReady
    with pytest.raises(ProxyNotReady) as ei:
        sidecar("--set", "routecar_deadline=soon")
    assert "routecar_deadline must be a number of seconds, got 'soon'" in str(ei.value)
