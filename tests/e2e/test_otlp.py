"""Issue 13, OpenTelemetry end to end: the real sidecar exports one span per governed call
over OTLP/HTTP to a real receiver on 127.0.0.1 that decodes the protobuf, following the
GenAI conventions, as a child of the app's `traceparent`, with nothing of a no_log payload."""

from __future__ import annotations

import json
import secrets

import pytest

from tests.e2e.conftest import sdk
from tests.fakes.otlp import OtlpReceiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
EU_NO_LOG = json.dumps({"rules": [["eq", "region", "eu"]], "no_log": True})
GPT = json.dumps({"rules": [["eq", "id", "openai/gpt-5.5"]]})


@pytest.fixture
def receiver():   # requested before `sidecar`: it outlives the sidecar, whose stop flushes spans to it
    with OtlpReceiver() as rx:
        yield rx


@pytest.mark.parametrize("stock", [False, True])
def test_one_span_per_call(receiver, sidecar, fake, stock):
    if stock:   # stock mitmdump -s: the option instead of the standard variable
        side = sidecar("--set", f"routecar_otlp_endpoint={receiver.url}", stock=True,
                       env={"OTEL_BSP_SCHEDULE_DELAY": "50"})
    else:
        side = sidecar(env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50",
                            "OTEL_SERVICE_NAME": "checkout-sidecar"})
    canary = f"CANARY-{secrets.token_hex(8)}"
    fake.set_script("mistral", [{"content": f"answer {canary}"}])
    client = sdk(side)
    child = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": f"secret {canary}"}],
        extra_headers={"X-Route-Policy": EU_NO_LOG, "traceparent": TRACEPARENT, "tracestate": "app=1"})
    assert canary in (child.parse().choices[0].message.content or "")
    root = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], extra_headers={"X-Route-Policy": GPT})
    spans = {s.attributes["routecar.trace_id"]: s for s in receiver.wait_spans(2)}
    c, r = spans[child.headers["x-route-trace-id"]], spans[root.headers["x-route-trace-id"]]

    # A child of the app's span, in the app's trace.
    assert (c.trace_id, c.parent_span_id) == (TRACE_ID, PARENT_ID)
    assert r.parent_span_id == "" and r.trace_id != TRACE_ID
    # GenAI semantic conventions + routecar's attributes.
    usage = root.parse().usage
    assert r.name == "chat gpt-5.5" and r.kind == 3   # SPAN_KIND_CLIENT
    a = r.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-5.5" and a["gen_ai.response.model"] == "gpt-5.5"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (usage.prompt_tokens,
                                                                                 usage.completion_tokens)
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["routecar.policy.fingerprint"] == root.headers["x-route-fingerprint"]
    assert a["routecar.attempts"] == 1 and a["routecar.cost_usd"] > 0
    assert c.attributes["gen_ai.provider.name"] == "mistral_ai" and c.attributes["routecar.no_log"] is True
    assert r.end_ns > r.start_ns
    service = r.resource["service.name"]
    assert service == ("routecar" if stock else "checkout-sidecar")
    # Nothing of the no_log call's payload, in any byte the collector received.
    assert not any(canary.encode() in body for body in receiver.bodies)
    assert all("messages" not in k for s in spans.values() for k in s.attributes)


def test_spans_are_flushed_at_shutdown(receiver, sidecar, fake):
    # A schedule delay far beyond the test: only the shutdown flush can deliver the span.
    side = sidecar(env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "600000"})
    raw = sdk(side).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], extra_headers={"X-Route-Policy": GPT})
    assert receiver.spans == []
    assert side.stop() == 0
    (span,) = receiver.wait_spans(1, timeout=5)
    assert span.attributes["routecar.trace_id"] == raw.headers["x-route-trace-id"]


def test_failed_call_is_an_error_span(receiver, sidecar, fake):
    side = sidecar(env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50"})
    fake.set_script("openai", [{"status": 503}])
    with pytest.raises(Exception):
        sdk(side).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                          extra_headers={"X-Route-Policy": GPT})
    (span,) = receiver.wait_spans(1)
    assert span.status_code == 2   # STATUS_CODE_ERROR
    assert span.attributes["error.type"] == "upstream_failed" and span.attributes["http.response.status_code"] == 502
    assert span.name == "chat gpt-4o"   # no entry answered: the model the app asked for
    assert "gen_ai.usage.input_tokens" not in span.attributes


def test_unreachable_collector_never_fails_a_call(sidecar, fake):
    # A short export timeout (retries included): the stop need not wait 5 s for a collector that
    # is not there; the calls never wait for it whatever its length.
    side = sidecar(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_BSP_SCHEDULE_DELAY": "50",
                        "OTEL_EXPORTER_OTLP_TIMEOUT": "0.5"})
    for _ in range(3):
        ok = sdk(side).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                               extra_headers={"X-Route-Policy": GPT})
        assert ok.choices[0].message.content
    assert side.stop() == 0
