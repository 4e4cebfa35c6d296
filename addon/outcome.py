"""One governed call, once it is over, as every observer sees it.

    CallOutcome   built once per call where its trace record is finalised; read by
                  metrics (metrics.py), spans (spans.py) and the access log (accesslog.py)

It carries identifiers, counts, timings and the price, never a payload or a
credential: an observer cannot leak what it was never given. `tenant` is only a
tenant the table identified (an unknown claimed id is attacker-chosen text and
stays out of labels); `claimed_tenant` keeps that text for the access log, which
escapes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .pricing import Cost
from .usage import ResponseFacts, TokenUsage

NONE = "none"   # label value when no entry answered (refused, no candidate, every attempt failed)


@dataclass(frozen=True, slots=True)
class CallOutcome:
    trace_id: str
    start: float                     # wall clock, epoch seconds
    duration_s: float
    status: int
    outcome: str                     # "ok", "provider_error", "stream_broken", "stream_truncated",
                                     # "client_gone" or an error code
    api: str = "chat"                # the app's API shape
    mode: str | None = None
    tenant: str | None = None        # identified by the tenant table
    claimed_tenant: str | None = None
    fingerprint: str | None = None
    entry: str | None = None         # the catalog entry that answered
    provider: str | None = None
    model: str | None = None         # the model routecar asked for
    requested_model: str | None = None
    attempts: Sequence[Mapping[str, Any]] = ()
    ttfb_s: float | None = None
    no_log: bool = True
    stream: bool = False
    facts: ResponseFacts = field(default_factory=ResponseFacts)
    cost: Cost | None = None
    est_cost: float | None = None
    trace_context: Mapping[str, str] = field(default_factory=dict)   # the app's traceparent/tracestate

    @property
    def usage(self) -> TokenUsage | None:
        return self.facts.usage

    @property
    def fell_back(self) -> bool:
        """Answered by an entry after at least one failed attempt."""
        return self.entry is not None and len(self.attempts) > 1

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"
