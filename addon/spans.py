"""OpenTelemetry: one span per governed call, exported over OTLP/HTTP.

    Spans(endpoint, env=...)                   a TracerProvider of its own (never the global one)
      .observe(outcome)                        one CLIENT span, GenAI semantic conventions
      .close()                                 flush and stop the export thread

Spans follow the GenAI semantic conventions (`gen_ai.operation.name`,
`gen_ai.provider.name`, `gen_ai.request.model`,
`gen_ai.response.model`, `gen_ai.usage.*`, `gen_ai.response.finish_reasons`)
plus `routecar.*` attributes (trace id, tenant, policy fingerprint, attempts,
entry, cost). Every attribute costs CPU twice (checked when set, encoded when
exported), so a span carries what a trace view shows; the rest of the story is
in the trace DB under `routecar.trace_id`. `OTEL_TRACES_SAMPLER` (e.g.
`parentbased_traceidratio` with `OTEL_TRACES_SAMPLER_ARG=0.1`) is honoured; an
app's unsampled `traceparent` gives an unsampled span. A call that carries a W3C `traceparent` becomes a child of
the app's span. No content attribute is ever set (`CallOutcome` holds no
payload); for a `no_log` call `observe` also drops any that a future change
might add (`CONTENT_ATTRIBUTES`).

The span is built once the call is over, with its real start and end times, and
handed to a BatchSpanProcessor: a queue read by the SDK's own thread, so the
proxy's event loop never waits for the collector (a full queue drops spans).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as GA
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .otelenv import export_timeout
from .outcome import CallOutcome

# routecar provider name -> the conventions' well-known gen_ai.provider.name value.
PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "google": "gcp.gemini",
                  "mistral": "mistral_ai", "azure": "azure.ai.openai", "groq": "groq", "deepseek": "deepseek",
                  "xai": "x_ai", "perplexity": "perplexity", "cohere": "cohere", "bedrock": "aws.bedrock"}
CONTENT_ATTRIBUTES = frozenset({GA.GEN_AI_INPUT_MESSAGES, GA.GEN_AI_OUTPUT_MESSAGES, GA.GEN_AI_SYSTEM_INSTRUCTIONS,
                                GA.GEN_AI_PROMPT, GA.GEN_AI_COMPLETION, GA.GEN_AI_TOOL_CALL_ARGUMENTS,
                                GA.GEN_AI_TOOL_CALL_RESULT, GA.GEN_AI_TOOL_DEFINITIONS})


def _resource(env: Mapping[str, str]) -> Resource:
    resource = Resource.create({})   # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    name = resource.attributes.get(SERVICE_NAME)
    if env.get("OTEL_SERVICE_NAME") or (isinstance(name, str) and not name.startswith("unknown_service")):
        return resource
    return resource.merge(Resource({SERVICE_NAME: "routecar"}))


class _DropWarnings(logging.Filter):
    """The SDK logs a warning per span it drops from a full queue: under overload, a line per
    call. Let one through a minute, saying how many were dropped since the last one."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, every_s: float = 60.0) -> None:
        super().__init__()
        self.clock, self.every_s = clock, every_s
        self.dropped, self._last = 0, -every_s

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Queue full"):
            return True
        self.dropped += 1
        now = self.clock()
        if now - self._last < self.every_s:
            return False
        self._last = now
        record.msg, record.args = ("routecar: span queue full, %d span(s) dropped so far (the collector or "
                                   "the export thread cannot keep up; calls are unaffected)", (self.dropped,))
        return True


def _quiet_drop_warnings() -> None:
    logger = logging.getLogger("opentelemetry.sdk._shared_internal")
    if not any(isinstance(f, _DropWarnings) for f in logger.filters):   # once per process
        logger.addFilter(_DropWarnings())


class Spans:
    def __init__(self, endpoint: str, *, env: Mapping[str, str], exporter: SpanExporter | None = None,
                 schedule_delay_ms: float | None = None, timeout_s: float | None = None) -> None:
        self.endpoint = endpoint
        self.provider = TracerProvider(resource=_resource(env))
        timeout_s = export_timeout(env) if timeout_s is None else timeout_s
        self.exporter = exporter or OTLPSpanExporter(endpoint=endpoint, timeout=timeout_s)
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter, schedule_delay_millis=schedule_delay_ms))
        _quiet_drop_warnings()
        self.tracer = self.provider.get_tracer("routecar")
        self.propagator = TraceContextTextMapPropagator()

    def _parent(self, headers: Mapping[str, str]) -> Context | None:
        if not headers.get("traceparent"):
            return None
        return self.propagator.extract(headers)   # an invalid traceparent gives a root span

    def attributes(self, o: CallOutcome) -> dict[str, Any]:
        provider = PROVIDER_NAMES.get(o.provider or "", o.provider or "routecar")
        attrs: dict[str, Any] = {
            GA.GEN_AI_OPERATION_NAME: "chat",
            GA.GEN_AI_PROVIDER_NAME: provider,
            GA.GEN_AI_REQUEST_MODEL: o.model or o.requested_model or "",
            "routecar.trace_id": o.trace_id,
            "routecar.api": o.api,
            "routecar.attempts": len(o.attempts),
            "routecar.no_log": o.no_log,
        }
        facts, u = o.facts, o.usage
        # Each attribute costs CPU twice (validated when set, encoded when exported): only
        # what a trace backend shows; the rest is in the trace DB under routecar.trace_id.
        optional = {
            GA.GEN_AI_RESPONSE_MODEL: facts.model, GA.GEN_AI_RESPONSE_ID: facts.response_id,
            GA.GEN_AI_RESPONSE_FINISH_REASONS: list(facts.finish_reasons) or None,
            GA.GEN_AI_USAGE_INPUT_TOKENS: u.input if u else None,
            GA.GEN_AI_USAGE_OUTPUT_TOKENS: u.output if u else None,
            GA.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: (u.cached_input or None) if u else None,
            GA.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: (u.cache_write or None) if u else None,
            GA.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: (u.reasoning or None) if u else None,
            GA.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: o.ttfb_s if o.stream else None,
            "error.type": None if o.ok else o.outcome,   # routecar's outcome: upstream_failed, no_candidate...
            "http.response.status_code": None if o.ok else o.status,
            "routecar.tenant": o.tenant, "routecar.policy.fingerprint": o.fingerprint,
            "routecar.entry": o.entry,
            "routecar.requested_model": o.requested_model if o.requested_model != o.model else None,
            "routecar.cost_usd": o.cost.usd if o.cost else None,
        }
        attrs.update((k, v) for k, v in optional.items() if v is not None)
        return attrs

    def observe(self, o: CallOutcome) -> None:
        start = int(o.start * 1e9)
        attrs = self.attributes(o)
        if o.no_log:   # enforced here, where the span is made, whatever `attributes` returns
            attrs = {k: v for k, v in attrs.items() if k not in CONTENT_ATTRIBUTES}
        span = self.tracer.start_span(f"chat {attrs[GA.GEN_AI_REQUEST_MODEL]}".rstrip(),
                                      context=self._parent(o.trace_context), kind=SpanKind.CLIENT,
                                      attributes=attrs, start_time=start)
        if not o.ok:
            span.set_status(Status(StatusCode.ERROR, o.outcome))
        span.end(end_time=start + int(o.duration_s * 1e9))

    def close(self, timeout_s: float = 5.0) -> None:
        self.provider.force_flush(int(timeout_s * 1000))
        self.provider.shutdown()
