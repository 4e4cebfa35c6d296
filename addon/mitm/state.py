"""One governed request as the router follows it (`Routed`, kept in flow.metadata), and what
it becomes at the end: the `x-route-*` headers, the mitmweb comment and the trace record.

No hooks here; `router.py` calls these.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..apis import API_NAMES, SHAPES, ApiName
from ..engine import Engine, Resolved
from ..governance import Disposition, ErrorFormat, Kind, Verdict
from ..policy import Decision
from ..relay import StreamStats
from ..traces.record import TraceRecord
from ..upstream import Result


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
    return ("ok" if res.status < 400 else "provider_error"), Disposition.ROUTED


def trace_record(state: Routed, stats: StreamStats | None,
                 catalog: list[dict[str, Any]] | None) -> TraceRecord:
    """The trace of a finished request. No payload for no_log, nor for passthrough (never held)."""
    res, d, r = state.result, state.decision, state.resolved
    assert res is not None
    what, disposition = outcome(state, stats)
    response_body: bytes | None = None
    if not state.no_log and state.kind is not Kind.PASSTHROUGH:
        response_body = bytes(stats.captured) if stats is not None and stats.captured is not None else res.body
    return TraceRecord(
        trace_id=state.trace_id, ts=time.time(), tenant=r.tenant if r else getattr(res.error, "tenant", None),
        mode=state.mode, no_log=state.no_log, stream=bool(d and d.request.stream), status=res.status,
        outcome=what, disposition=disposition,
        latency_ms=round((time.monotonic() - state.t0) * 1000, 2), ttfb_ms=res.ttfb_ms,
        usage=shape_usage(state.api_in, stats, res.body), api_in=state.api_in, api_out=res.api_out,
        decision=d, attempts=res.attempts,  # to_dict() runs in the writer thread
        request_body=state.request_body, response_body=response_body,
        error=res.error.to_openai() if res.error is not None else None,
        fingerprint=r.policy.fingerprint if r else None, digest=r.policy.digest if r else None,
        requested_model=state.requested_model, catalog=catalog)


_USAGE = re.compile(rb'"usage"\s*:\s*(\{[^{}]*\})')


def shape_usage(api_in: ApiName, stats: StreamStats | None, body: bytes) -> dict[str, Any] | None:
    """The usage the provider reported: read from the stream as it passed, or from the whole
    answer (in the caller's shape), else the last `usage` object seen."""
    if stats is not None and stats.usage is not None:
        return stats.usage.to_dict()
    if (found := SHAPES[api_in].usage(body if stats is None else bytes(stats.tail))) is not None:
        return found.to_dict()
    return usage(bytes(stats.tail) if stats is not None else body)


def usage(blob: bytes | None) -> dict[str, Any] | None:
    """The last `usage` object of a response or an SSE stream's tail."""
    if not blob:
        return None
    found = _USAGE.findall(blob)
    if not found:
        return None
    try:
        value = json.loads(found[-1])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
