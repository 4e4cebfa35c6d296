"""Issue 10 §5 end to end: health tells the truth.

- a 2xx whose body the app could not read (not JSON, an unknown coding) is a failed
  attempt: the SDK gets the next entry's answer, the trace and /x/healthz count it;
- a provider that cuts every stream after its first event cools down (before: each cut
  was booked as one success and one failure, and the breaker never tripped).
"""

from __future__ import annotations

import json

import openai
import pytest

from tests.e2e.conftest import curl_json, sdk
from tests.e2e.test_fallback import call, stream, trace

GARBAGE_2XX = [
    {"body": "<html><body>upstream said ok</body></html>", "content_type": "text/html"},
    {"body": "{\"id\": \"chatcmpl-1\", \"choices\": [", "content_type": "application/json"},
    {"body": "[]", "content_type": "application/json"},
    {"body": "", "content_type": "application/json"},
    {"body": "{\"ok\": true}", "headers": {"Content-Encoding": "br"}},
    {"compress": "x-unknown"},
]


@pytest.mark.parametrize("rule", GARBAGE_2XX, ids=["html", "cut-json", "array", "empty", "lying-br", "unknown-coding"])
def test_garbage_2xx_falls_back_and_counts_as_a_failure(sidecar, fake, rule):
    side = sidecar(mode="reverse")
    fake.set_script("mistral", [dict(rule, status=200)])
    raw = call(side)
    assert raw.parse().choices[0].message.content.startswith("[fake:scaleway]")
    t = trace(side, raw.headers["x-route-trace-id"])
    assert [(a["status"], a["error_class"]) for a in t["attempts"]] == [(200, "invalid_response"), (200, "ok")]
    _, health = curl_json(side, "GET", "/x/healthz")
    mistral = health["health"]["mistral/mistral-small-3"]
    assert (mistral["samples"], mistral["consecutive_failures"], mistral["error_rate"]) == (1, 1, 1.0)


def test_garbage_2xx_everywhere_is_upstream_failed_not_a_200(sidecar, fake):
    side = sidecar(mode="reverse")
    for name in fake.ports:
        fake.set_script(name, [{"status": 200, "body": "not json"}])
    with pytest.raises(openai.APIStatusError) as ei:
        call(side)
    assert ei.value.status_code == 502 and ei.value.body["code"] == "upstream_failed"
    assert {a["error_class"] for a in ei.value.body["attempts"]} == {"invalid_response"}


def test_a_provider_that_cuts_every_stream_cools_down(sidecar, fake):
    side = sidecar(mode="reverse")
    # Every stream: the first event, then the connection is cut (no fallback once bytes left).
    fake.set_script("mistral", [{"cut_after_chunks": 0, "chunk_delay": 0.05, "match": {"model": "mistral-small-3"}}])
    for _ in range(3):
        s = stream(side)
        with pytest.raises(openai.APIError) as ei:
            for _chunk in s:
                pass
        assert "stream broke" in ei.value.message
        assert trace(side, s.response.headers["x-route-trace-id"])["outcome"] == "stream_broken"
    _, health = curl_json(side, "GET", "/x/healthz")
    mistral = health["health"]["mistral/mistral-small-3"]
    # Three failures, no success in between: the breaker is open.
    assert (mistral["samples"], mistral["consecutive_failures"]) == (3, 3)
    assert mistral["healthy"] is False and mistral["state"] == "open"
    fake.clear_requests()
    s = stream(side)
    text = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
    assert s.response.headers["x-route-provider"] == "scaleway" and text.startswith("[fake:scaleway]")
    assert fake.requests("mistral") == []   # cooled down: not tried first


def test_a_stream_that_ends_properly_is_booked_once_as_a_success(sidecar, fake):
    side = sidecar(mode="reverse")
    for _ in range(2):
        assert "".join(c.choices[0].delta.content or "" for c in stream(side) if c.choices).endswith("ok")
    _, health = curl_json(side, "GET", "/x/healthz")
    mistral = health["health"]["mistral/mistral-small-3"]
    assert (mistral["samples"], mistral["consecutive_failures"], mistral["error_rate"]) == (2, 0, 0.0)
    assert mistral["latency_ms"] is not None


def test_a_client_that_hangs_up_says_nothing_about_the_provider(sidecar, fake):
    side = sidecar(mode="reverse")
    fake.set_script("mistral", [{"chunks": 100, "chunk_delay": 0.05, "times": 1}])
    s = stream(side)
    next(iter(s))
    s.close()
    assert trace(side, s.response.headers["x-route-trace-id"])["outcome"] == "client_gone"
    _, health = curl_json(side, "GET", "/x/healthz")
    assert "mistral/mistral-small-3" not in health["health"]


def test_policy_health_field_sees_the_truth(sidecar, fake):
    """`healthy` in a policy reflects cut streams too: an only-healthy policy skips the cutter."""
    side = sidecar(mode="reverse")
    fake.set_script("mistral", [{"cut_after_chunks": 0, "chunk_delay": 0.05, "match": {"model": "mistral-small-3"}}])
    for _ in range(3):
        with pytest.raises(openai.APIError):
            for _chunk in stream(side):
                pass
    only_healthy = json.dumps({"rules": [["eq", "region", "eu"], ["eq", "healthy", True]]})
    code, ranked = curl_json(side, "POST", "/x/rank", json.dumps({"policy": json.loads(only_healthy)}))
    dropped = {c["id"]: c["failed"] for c in ranked["candidates"] if not c["passed"]}
    assert dropped["mistral/mistral-small-3"]["field"] == "healthy"
    assert call(side, only_healthy).headers["x-route-provider"] == "scaleway"
