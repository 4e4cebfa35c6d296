"""One governed request as the router follows it (`Routed`, kept in flow.metadata), and what
it becomes at the end: the `x-route-*` headers, the mitmweb comment, the trace record and
the `CallOutcome` metrics, spans and the access log see.

No hooks here; `router.py` calls these.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..apis import API_NAMES, ApiName, StreamEnd
from ..catalog import CatalogEntry
from ..engine import Engine, Resolved
from ..governance import Disposition, ErrorFormat, Kind, Verdict
from ..policy import Decision
from ..outcome import CallOutcome
from ..pricing import Cost
from ..relay import StreamStats
from ..otelenv import TRACE_HEADERS
from ..telemetry import est_cost_of
from ..traces.record import TraceRecord
from ..upstream import Result
from ..usage import ResponseFacts, response_facts


@dataclass
class Routed:
    """What the addon knows about one governed request, kept in flow.metadata."""

    trace_id: str
    t0: float
    mode: str
    kind: Kind = Kind.ROUTE
    error_format: ErrorFormat = "openai"
    resolved: Resolved | None = None
    decision: Decision | None = None
    result: Result | None = None
    request_body: bytes | None = None
    requested_model: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    outcome: str | None = None      # set for passthrough: what the trace says happened
    api_in: ApiName = "chat"        # the API shape the app spoke
    traced: bool = False            # the trace was written

    @property
    def no_log(self) -> bool:
        # Until a policy says otherwise, keep nothing: an invalid policy may have meant no_log.
        return self.resolved is None or self.resolved.policy.no_log

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        # mitmproxy deep-copies flow.metadata to save a flow (--save, mitmweb backups) and then
        # serialises it as tnetstring: a copy keeps only the trace id and fingerprint, never the
        # request body or the app's headers (its credentials), and stays serialisable.
        return {"trace_id": self.trace_id,
                "fingerprint": self.resolved.policy.fingerprint if self.resolved else None}


def caller_shape(verdict: Verdict) -> tuple[ApiName, ErrorFormat]:
    """The API shape a governed caller speaks, and its error format: Anthropic's for Messages
    callers (and for refusals to Anthropic callers, as governance says)."""
    api: ApiName = verdict.api if verdict.api in API_NAMES else "chat"  # type: ignore[assignment]
    if verdict.kind is Kind.ROUTE:
        return api, "anthropic" if api == "messages" else "openai"
    return api, verdict.error_format


def models_answer(engine: Engine, state: Routed, host: str) -> bytes:
    """`GET …/models` for a governed caller: the catalog entries its policy allows, in Anthropic's
    list format for Anthropic callers (an Anthropic host or an `anthropic-version` header)."""
    assert state.resolved is not None
    anthropic = "anthropic-version" in state.headers or engine.providers.speaks_at(host, "messages")
    state.error_format = "anthropic" if anthropic else "openai"
    return json.dumps(engine.models(state.resolved.policy, anthropic)).encode()


def route_headers(state: Routed) -> list[tuple[str, str]]:
    out = [("x-route-trace-id", state.trace_id)]
    if state.resolved is not None:
        out.append(("x-route-fingerprint", state.resolved.policy.fingerprint))
    res = state.result
    if res is not None and state.kind is not Kind.PASSTHROUGH:
        out.append(("x-route-attempts", str(len(res.attempts))))
        if res.entry_id and state.decision is not None:
            entry = state.decision.catalog.get(res.entry_id)
            if entry is not None:
                out += [("x-route-model", entry.model), ("x-route-provider", entry.provider)]
    return out


def summary(state: Routed) -> str:
    """The flow's comment in mitmweb."""
    r, d, res = state.resolved, state.decision, state.result
    parts = [f"routecar {state.trace_id}"]
    if r is not None:
        parts.append(f"tenant={r.tenant or '-'} policy={r.policy.fingerprint}")
    if res is not None:
        parts.append(f"-> {res.entry_id or 'none'} status={res.status} attempts={len(res.attempts)}")
    elif d is not None and d.selected:
        parts.append(f"selected={d.selected.entry.id}")
    return " ".join(parts)


def outcome(state: Routed, stats: StreamStats | None) -> tuple[str, Disposition]:
    """(outcome, disposition) of a finished governed request, for its trace row."""
    res = state.result
    assert res is not None
    if state.outcome is not None:  # passthrough
        failed = state.outcome != "passthrough"
        return state.outcome, Disposition.FAILED if failed else Disposition.PASSTHROUGH
    if res.error is not None:
        return res.error.code, Disposition.REFUSED if res.error.status < 500 else Disposition.FAILED
    if stats is not None and stats.interrupted:
        return "shutting_down", Disposition.FAILED
    if stats is not None and stats.error:
        return "stream_broken", Disposition.FAILED
    if stats is not None and stats.client_gone:
        return "client_gone", Disposition.ROUTED
    if stats is not None and stats.end is StreamEnd.TRUNCATED:   # ended without its terminal marker
        return "stream_truncated", Disposition.FAILED
    if stats is not None and stats.end is StreamEnd.ERROR:       # the provider's own error event
        return "stream_broken", Disposition.FAILED
    return ("ok" if res.status < 400 else "provider_error"), Disposition.ROUTED


def answer_facts(state: Routed, stats: StreamStats | None) -> ResponseFacts:
    """Usage, model and finish reasons of the answer. A stream's usage is what its shape's
    reader saw over the whole stream; model and finish reasons come from its last bytes."""
    res = state.result
    assert res is not None
    facts = response_facts(bytes(stats.tail) if stats is not None else res.body)
    if stats is not None and stats.usage is not None:
        facts = dataclasses.replace(facts, usage=stats.usage)
    return facts


def answering_entry(state: Routed) -> CatalogEntry | None:
    res, d = state.result, state.decision
    return d.catalog.get(res.entry_id) if res is not None and d is not None and res.entry_id else None


def call_outcome(state: Routed, stats: StreamStats | None, facts: ResponseFacts, cost: Cost | None) -> CallOutcome:
    """The finished call as metrics, spans and the access log see it (no payload, no credential)."""
    res, d, r = state.result, state.decision, state.resolved
    assert res is not None
    what, _ = outcome(state, stats)
    entry = answering_entry(state)
    duration_s = time.monotonic() - state.t0
    return CallOutcome(
        state.trace_id, time.time() - duration_s, duration_s, res.status, what, mode=state.mode,
        tenant=r.tenant if r else None, claimed_tenant=None if r else getattr(res.error, "tenant", None),
        fingerprint=r.policy.fingerprint if r else None, entry=entry.id if entry else None,
        provider=entry.provider if entry else None, model=entry.model if entry else None,
        requested_model=state.requested_model, attempts=res.attempts,
        ttfb_s=res.ttfb_ms / 1000 if res.ttfb_ms is not None else None, no_log=state.no_log,
        stream=bool(d and d.request.stream), facts=facts, cost=cost, est_cost=est_cost_of(d, res.entry_id),
        trace_context={k: state.headers[k] for k in TRACE_HEADERS if k in state.headers})


def trace_record(state: Routed, stats: StreamStats | None, catalog: list[dict[str, Any]] | None,
                 facts: ResponseFacts | None = None, cost: Cost | None = None) -> TraceRecord:
    """The trace of a finished request. No payload for no_log, nor for passthrough (never held)."""
    res, d, r = state.result, state.decision, state.resolved
    assert res is not None
    what, disposition = outcome(state, stats)
    response_body: bytes | None = None
    if not state.no_log and state.kind is not Kind.PASSTHROUGH:
        response_body = bytes(stats.captured) if stats is not None and stats.captured is not None else res.body
    usage = (facts if facts is not None else answer_facts(state, stats)).usage
    return TraceRecord(
        trace_id=state.trace_id, ts=time.time(), tenant=r.tenant if r else getattr(res.error, "tenant", None),
        mode=state.mode, no_log=state.no_log, stream=bool(d and d.request.stream), status=res.status,
        outcome=what, disposition=disposition,
        latency_ms=round((time.monotonic() - state.t0) * 1000, 2), ttfb_ms=res.ttfb_ms,
        usage=usage.to_trace() if usage else None,
        actual_cost=cost.usd if cost else None, cost_source=cost.source if cost else None,
        api_in=state.api_in, api_out=res.api_out,
        decision=d, attempts=res.attempts,  # to_dict() runs in the writer thread
        request_body=state.request_body, response_body=response_body,
        error=res.error.to_openai() if res.error is not None else None,
        fingerprint=r.policy.fingerprint if r else None, digest=r.policy.digest if r else None,
        requested_model=state.requested_model, catalog=catalog)
