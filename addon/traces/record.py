"""What one routed request leaves behind: a `TraceRecord`, filled in by the addon and
turned into rows by `.rows` in a writer (never on the proxy's event loop)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..policy import Decision


@dataclass(frozen=True)
class TraceRecord:
    """One request as the addon saw it: the Decision (None when the request failed before
    one was made), the attempts, the outcome and, unless `no_log`, the payloads."""

    trace_id: str
    ts: float
    tenant: str | None = None
    mode: str | None = None
    no_log: bool = False
    stream: bool = False
    status: int | None = None
    outcome: str = "ok"
    disposition: str = "routed"   # routed | refused | failed | passthrough (governance.Disposition)
    api_in: str | None = None      # the shape the app spoke: chat, responses, messages
    api_out: str | None = None     # the shape the answering attempt was sent in
    latency_ms: float | None = None
    ttfb_ms: float | None = None
    # Token counts: prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens (usage.TokenUsage.to_trace)
    usage: Mapping[str, Any] | None = None
    actual_cost: float | None = None
    cost_source: str | None = None   # "genai-prices" or "catalog" (pricing.py)
    decision: Decision | None = None
    attempts: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    request_body: bytes | str | None = None
    response_body: bytes | str | None = None
    error: Mapping[str, Any] | None = None
    fingerprint: str | None = None
    digest: str | None = None
    requested_model: str | None = None
    # The catalog the decision was made against (`Catalog.to_list()`); the addon sends it
    # once per catalog version, the store keeps the first copy of each version.
    catalog: Sequence[Mapping[str, Any]] | None = None
