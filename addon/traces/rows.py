"""Trace rows: how one TraceRecord becomes rows of each table.

One `decisions` row per call holds what differs from call to call (ids, times,
the request's tokens, attempts, outcome, usage, cost) and the key of its
decision part (`.parts`): the verdicts, ranking and policy that repeat call
after call are written once per distinct part, not once per call.

Two invariants are enforced here rather than trusted from callers: a `no_log`
record never has its request or response payload written anywhere (not in
`payloads`, and not echoed in the `error` column or a decision part: a part
quoting the payload is not shared, the trace then keeps its decision inline,
in its own columns, those strings removed), and every text that reaches the
database goes through `scrub()`, so credentials copied into an error message or
a payload never land on disk.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..policy import Decision, RequestProfile
from .parts import CANDIDATE_COLUMNS, DecisionPart, PartCache, legacy_columns
from .record import TraceRecord
from .scrub import dumps, dumps_json, maybe_secret, mentions, payload_strings, scrub, without

__all__ = ["CANDIDATE_COLUMNS", "ATTEMPT_FIELDS", "record_rows", "attempt_list", "request_json"]

ATTEMPT_FIELDS = ("entry_id", "provider", "model", "status", "error_class", "duration_ms")
_RECORD_KEYS = ("entry", "provider", "model", "status", "error_class", "duration_ms")
_JSON_COLUMNS = ("policy", "decision", "error", "request", "attempt_list", "costs")  # scrubbed structurally


def _text(body: bytes | str | None) -> str | None:
    if body is None:
        return None
    return body.decode("utf-8", "replace") if isinstance(body, bytes) else body


def _affinity(value: Any, real: bool) -> Any:
    """What an INTEGER (real=False) or REAL column would have stored (attempts were rows before
    the `shared_parts` migration)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if real:
        return float(value)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def attempt_list(attempts: Sequence[Mapping[str, Any]]) -> str | None:
    """The attempts as one JSON array of ATTEMPT_FIELDS arrays (credentials scrubbed)."""
    if not attempts:
        return None
    rows = [[a.get(k) for k in _RECORD_KEYS] for a in attempts]
    for r in rows:
        r[3], r[5] = _affinity(r[3], False), _affinity(r[5], True)
    text = dumps(rows)
    if maybe_secret(text):
        text = dumps([[scrub(v) if isinstance(v, str) else v for v in r] for r in rows])
    return text


def request_json(req: RequestProfile) -> str:
    """The request profile as the `request` column keeps it: `[prompt_tokens, max_tokens, out_tokens,
    tools, vision, stream]`, and the providers that can carry its API shape when they are limited."""
    text = "[%d,%s,%d,%d,%d,%d" % (  # dumps() of these six, without the encoder's cost
        req.prompt_tokens, "null" if req.max_tokens is None else "%d" % req.max_tokens, req.out_tokens,
        req.tools, req.vision, req.stream)
    return text + ("]" if req.api_providers is None else "," + dumps(sorted(req.api_providers)) + "]")


def _chosen(d: Decision | None, attempts: Sequence[Mapping[str, Any]]) -> tuple[Any, Any, Any, float | None]:
    """(entry id, model, provider, est_cost) of the entry that answered, else of the selected one."""
    won = [a for a in attempts if isinstance(a.get("status"), int) and a["status"] < 400]
    entries = d.catalog.entries if d is not None else ()
    order = d.order if d is not None else ()
    chosen_id = won[-1].get("entry") if won else (entries[order[0]].id if order else None)
    for n, i in enumerate(order):
        e = entries[i]
        if e.id == chosen_id:
            assert d is not None
            return chosen_id, e.model, e.provider, d.costs[n]
    last = won[-1] if won else {}
    return chosen_id, last.get("model"), last.get("provider"), None


def record_rows(rec: TraceRecord, parts: PartCache | None = None) -> dict[str, list[Any]]:
    """Split one record into the rows of each table, enforcing no_log and scrubbing.

    `parts` memoises the decision parts of recent decisions (one per store); a hit costs
    no JSON at all. Returns {table: rows}: dicts for `decisions`, `payloads` and
    `candidate_sets`; PolicyPart / DecisionPart objects for `policy_parts` / `decision_parts`;
    (version, entries JSON, ts) for `catalogs`."""
    request, response = _text(rec.request_body), _text(rec.response_body)
    error, d = rec.error, rec.decision
    # A no_log record keeps no payload, nor any string of it echoed elsewhere (an error
    # message quoting the prompt, a clause id copied from it).
    hidden = payload_strings(request) | payload_strings(response) if rec.no_log else set()
    if rec.no_log:
        request = response = None
    chosen_id, chosen_model, chosen_provider, est_cost = _chosen(d, rec.attempts)
    usage = rec.usage or {}
    row: dict[str, Any] = {
        "trace_id": rec.trace_id, "ts": rec.ts, "tenant": rec.tenant,
        "fingerprint": d.policy.fingerprint if d else rec.fingerprint, "digest": None if d else rec.digest,
        "policy": None, "catalog_version": None, "requested_model": d.request.model if d else rec.requested_model,
        "chosen_entry": chosen_id, "chosen_model": chosen_model, "chosen_provider": chosen_provider,
        "status": rec.status, "outcome": rec.outcome, "disposition": rec.disposition,
        "api_in": rec.api_in, "api_out": rec.api_out,
        "latency_ms": rec.latency_ms, "ttfb_ms": rec.ttfb_ms,
        "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
        "cached_tokens": usage.get("cached_tokens"), "reasoning_tokens": usage.get("reasoning_tokens"),
        "est_cost": est_cost, "actual_cost": rec.actual_cost, "cost_source": rec.cost_source,
        "attempts_count": len(rec.attempts), "no_log": int(rec.no_log), "stream": int(rec.stream),
        "mode": rec.mode, "decision": None, "error": dumps_json(without(error, hidden) if hidden else error),
        "part": None, "request": None, "attempt_list": attempt_list(rec.attempts), "costs": None,
    }
    out: dict[str, list[Any]] = {"decisions": [row], "payloads": [], "candidate_sets": [],
                                 "policy_parts": [], "decision_parts": [], "catalogs": []}
    if rec.catalog is not None and d is not None:  # the addon sends each catalog version once
        out["catalogs"].append((d.catalog.version, dumps_json(list(rec.catalog)), rec.ts))
    if request is not None or response is not None:
        out["payloads"].append({"trace_id": rec.trace_id, "request": request, "response": response})
    if d is not None:
        part = (parts if parts is not None else PartCache()).decision(d)
        req = d.request
        if hidden and (mentions(part.leaves, hidden) or mentions(part.policy.leaves, hidden)
                       or (req.model is not None and mentions(req.model, hidden))):
            _inline(row, out, d, part, hidden)
        else:
            row["part"] = part.key
            row["request"] = request_json(req)
            row["costs"] = None if part.costs_of(req) == d.costs else dumps(list(d.costs))
            out["policy_parts"].append(part.policy)
            out["decision_parts"].append(part)
    # Parts hold catalog values and pre-scrubbed policy parts; the rest is per request
    # and may carry anything the app sent.
    for r, skip in ((row, _JSON_COLUMNS), *((p, ()) for p in out["payloads"])):
        texts = [v for k, v in r.items() if isinstance(v, str) and k not in skip]
        if texts and maybe_secret("\n".join(texts)):  # one search per row, not per column
            for k, v in r.items():
                if isinstance(v, str) and k not in skip:
                    r[k] = scrub(v)
    return out


def _inline(row: dict[str, Any], out: dict[str, list[Any]], d: Decision, part: DecisionPart,
            hidden: set[str]) -> None:
    """A no_log trace whose decision quotes its payload: the decision inline in the trace's own
    columns (as before the `shared_parts` migration), those strings removed."""
    decision_json, entries = legacy_columns(part.policy.policy, part.policy.summary, part.catalog_version,
                                            json.loads(part.candidates), json.loads(part.keys), d.request,
                                            list(d.costs))
    policy = json.loads(part.policy.policy) if part.policy.policy else None
    row.update(digest=d.policy.digest, catalog_version=d.catalog.version,
               policy=dumps_json(without(policy, hidden)) if policy is not None else None,
               decision=dumps_json(without(json.loads(decision_json), hidden)))
    out["candidate_sets"].append({"trace_id": row["trace_id"], "entries": dumps_json(without(entries, hidden))})
