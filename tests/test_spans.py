"""OpenTelemetry spans: GenAI conventions, the app's traceparent, nothing of a payload."""

from __future__ import annotations

import time

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from routecar.outcome import CallOutcome
from routecar.pricing import Cost
from routecar.otelenv import export_timeout, otlp_endpoint, protocol_warning
from routecar.spans import Spans
from routecar.usage import ResponseFacts, TokenUsage

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("option, env, expected", [
    ("", {}, None),
    ("http://c:4318", {}, "http://c:4318/v1/traces"),
    ("http://c:4318/", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4318"}, "http://c:4318/v1/traces"),
    ("http://c:4318/v1/traces", {}, "http://c:4318/v1/traces"),
    ("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "http://c:4318/v1/traces"),
    ("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
          "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:9/custom"}, "http://t:9/custom"),
    ("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, None),
])
def test_endpoint(option, env, expected):
    assert otlp_endpoint(option, env) == expected


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    s = Spans("http://127.0.0.1:9/v1/traces", env={}, exporter=exporter, schedule_delay_ms=10)
    yield s, exporter
    s.close()


def outcome(**kw) -> CallOutcome:
    base = dict(trace_id="rt_abc", start=time.time() - 0.5, duration_s=0.5, status=200, outcome="ok",
                tenant="acme", fingerprint="pol_123456", entry="anthropic/claude-x", provider="anthropic",
                model="claude-x", requested_model="gpt-4o", attempts=({}, {}), ttfb_s=0.2, no_log=False,
                facts=ResponseFacts(TokenUsage(120, 100, 30, 10), "claude-x-2025", "msg_1", ("end_turn",)),
                cost=Cost(0.0042, "genai-prices"), est_cost=0.005)
    base.update(kw)
    return CallOutcome(**base)


def finished(exporter, s):
    s.provider.force_flush(5000)
    return exporter.get_finished_spans()


def test_genai_conventions(spans):
    s, exporter = spans
    o = outcome()
    s.observe(o)
    (span,) = finished(exporter, s)
    a = dict(span.attributes)
    assert span.name == "chat claude-x" and span.kind is SpanKind.CLIENT
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "anthropic"
    assert a["gen_ai.request.model"] == "claude-x" and a["gen_ai.response.model"] == "claude-x-2025"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (120, 30)
    assert a["gen_ai.usage.cache_read.input_tokens"] == 100 and a["gen_ai.usage.reasoning.output_tokens"] == 10
    assert a["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert a["routecar.tenant"] == "acme" and a["routecar.policy.fingerprint"] == "pol_123456"
    assert a["routecar.attempts"] == 2 and a["routecar.trace_id"] == "rt_abc"
    assert a["routecar.cost_usd"] == 0.0042 and a["routecar.requested_model"] == "gpt-4o"
    assert "error.type" not in a and "http.response.status_code" not in a
    assert span.end_time - span.start_time == pytest.approx(0.5e9, rel=1e-6)
    assert span.parent is None
    assert span.resource.attributes["service.name"] == "routecar"


def test_child_of_the_apps_traceparent(spans):
    s, exporter = spans
    s.observe(outcome(trace_context={"traceparent": PARENT, "tracestate": "vendor=1"}))
    s.observe(outcome(trace_context={"traceparent": "00-garbage"}))
    child, root = finished(exporter, s)
    assert child.parent is not None and child.parent.span_id == 0xb7ad6b7169203331
    assert child.context.trace_id == 0x0af7651916cd43dd8448eb211c80319c
    assert root.parent is None   # an invalid traceparent starts a new trace, never an error


def test_failure_status(spans):
    s, exporter = spans
    s.observe(outcome(status=502, outcome="upstream_failed", entry=None, provider=None, model=None,
                      facts=ResponseFacts(), cost=None))
    (span,) = finished(exporter, s)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "upstream_failed"
    assert span.name == "chat gpt-4o"   # no entry answered: the model the app asked for


def test_no_log_never_has_content_attributes(spans, monkeypatch):
    s, exporter = spans
    original = s.attributes

    def with_content(o):   # a future change that captures content...
        return {**original(o), "gen_ai.input.messages": "CANARY", "gen_ai.output.messages": "CANARY"}
    monkeypatch.setattr(s, "attributes", with_content)
    s.observe(outcome(no_log=True))
    s.observe(outcome(no_log=False))
    no_log, kept = finished(exporter, s)
    assert "gen_ai.input.messages" in kept.attributes   # the test's injection works...
    assert not {"gen_ai.input.messages", "gen_ai.output.messages"} & set(no_log.attributes)  # ...and is dropped


@pytest.mark.parametrize("env, warns", [
    ({}, False), ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, False),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, True), ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, True),
])
def test_protocol_warning(env, warns):
    assert (protocol_warning(env) is not None) == warns


@pytest.mark.parametrize("env, seconds", [
    ({}, 5.0),
    ({"OTEL_EXPORTER_OTLP_TIMEOUT": "0.5"}, 0.5),
    ({"OTEL_EXPORTER_OTLP_TIMEOUT": "3", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2"}, 2.0),
    ({"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "soon", "OTEL_EXPORTER_OTLP_TIMEOUT": "7"}, 7.0),
    ({"OTEL_EXPORTER_OTLP_TIMEOUT": "0"}, 5.0),
    ({"OTEL_EXPORTER_OTLP_TIMEOUT": "-1"}, 5.0),
])
def test_export_timeout(env, seconds):
    assert export_timeout(env) == seconds


def test_the_exporter_gets_the_export_timeout(monkeypatch):
    import routecar.spans

    made = []

    class Recording(InMemorySpanExporter):
        def __init__(self, **kw):
            super().__init__()
            made.append(kw)

    monkeypatch.setattr(routecar.spans, "OTLPSpanExporter", Recording)
    for env, timeout in (({"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "0.25"}, 0.25), ({}, 5.0)):
        Spans("http://127.0.0.1:9/v1/traces", env=env).close()
        assert made.pop() == {"endpoint": "http://127.0.0.1:9/v1/traces", "timeout": timeout}


def test_a_sidecar_without_spans_never_imports_the_sdk():
    import subprocess
    import sys

    code = ("import sys; from routecar.telemetry import Telemetry, TelemetryConfig; "
            "t = Telemetry.build(TelemetryConfig(), env={}); "
            "assert t.spans is None; print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_drop_warnings_are_rate_limited():
    import logging

    from routecar.spans import _DropWarnings
    now = [0.0]
    f = _DropWarnings(clock=lambda: now[0], every_s=60)

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("opentelemetry.sdk._shared_internal", logging.WARNING, "", 0, msg, ("Span",), None)
    shown = [f.filter(rec("Queue full, dropping %s.")) for _ in range(1000)]
    assert shown.count(True) == 1 and f.dropped == 1000
    now[0] = 61.0
    r = rec("Queue full, dropping %s.")
    assert f.filter(r) and "1001 span(s) dropped so far" in r.getMessage()
    assert f.filter(rec("some other warning"))


def test_sampling_is_honoured(monkeypatch):
    exporter = InMemorySpanExporter()
    s = Spans("http://127.0.0.1:9/v1/traces", env={}, exporter=exporter, schedule_delay_ms=10)
    unsampled = PARENT[:-2] + "00"
    s.observe(outcome(trace_context={"traceparent": unsampled}))   # the app did not sample: neither do we
    s.observe(outcome())
    assert [sp.attributes["routecar.trace_id"] for sp in finished(exporter, s)] == ["rt_abc"]
    assert len(finished(exporter, s)) == 1
    s.close()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    off = Spans("http://127.0.0.1:9/v1/traces", env={}, exporter=(none := InMemorySpanExporter()),
                schedule_delay_ms=10)
    off.observe(outcome())
    off.close()
    assert none.get_finished_spans() == ()
