"""Reading traces back: a `decisions` row of either layout as the one shape readers get.

Rows written before the `shared_parts` migration hold their decision inline, in their own
columns (`policy`, `decision`, a `candidate_sets` row, `attempt_rows` rows);
later rows reference a decision part and keep only what differs per call.
`expand` gives a parts row the inline columns, built exactly as the writer
before the `shared_parts` migration built them (`parts.legacy_columns`), so `routecar
traces --json` and `routecar explain` print the same for the same call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..policy import RequestProfile
from ..policy.request import usd
from .parts import CANDIDATE_COLUMNS, legacy_columns
from .rows import ATTEMPT_FIELDS
from .scrub import loads_json

# Columns that only the store reads: readers get the inline shape.
INTERNAL_COLUMNS = ("part", "request", "attempt_list", "costs")


@dataclass(frozen=True, slots=True)
class StoredPart:
    """A decision part and its policy part as read from the database (parsed once)."""

    fingerprint: str
    digest: str
    policy: str | None
    summary: str
    catalog_version: str
    candidates: list[list[Any]]
    keys: list[list[Any]]

    @property
    def prices(self) -> list[tuple[float, float]]:
        ranked = sorted((c[9], c[10], c[11]) for c in self.candidates if c[9] is not None)
        return [(pin, pout) for _, pin, pout in ranked]


PART_QUERY = ("SELECT p.fingerprint, p.digest, p.policy, p.summary, d.catalog_version, d.candidates, d.keys "
              "FROM decision_parts d JOIN policy_parts p ON p.key = d.policy_key WHERE d.key = ?")


def stored_part(row: Sequence[Any]) -> StoredPart:
    """From a PART_QUERY row."""
    return StoredPart(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), json.loads(row[6]))


def _request(row: Mapping[str, Any]) -> RequestProfile:
    """The profile `rows.request_json` wrote (its model is the row's `requested_model`)."""
    pt, mt, _ot, tools, vision, stream, *apis = json.loads(row["request"])
    return RequestProfile(row["requested_model"], pt, mt, bool(tools), bool(vision), bool(stream),
                          frozenset(apis[0]) if apis else None)


def expand(row: dict[str, Any], part: StoredPart | None) -> list[dict[str, Any]] | None:
    """Fill in a parts row's inline columns (in place) and drop its internal ones; return its
    candidate rows (as the `candidates` view gives them), or None for an inline row (read those
    from `candidate_sets`)."""
    candidates = None
    if row.get("part") is not None and part is not None:
        request = _request(row)
        costs = (json.loads(row["costs"]) if row.get("costs") else
                 [usd(request.prompt_tokens, request.out_tokens, pin, pout) for pin, pout in part.prices])
        decision, entries = legacy_columns(part.policy, part.summary, part.catalog_version, part.candidates,
                                           part.keys, request, costs)
        row.update(digest=part.digest, policy=part.policy, catalog_version=part.catalog_version, decision=decision)
        candidates = [{"trace_id": row["trace_id"], "n": n, **dict(zip(CANDIDATE_COLUMNS, e))}
                      for n, e in enumerate(entries)]
    for column in INTERNAL_COLUMNS:
        row.pop(column, None)
    return candidates


def attempt_rows(trace_id: str, attempt_list: str | None) -> list[dict[str, Any]]:
    """A parts row's attempts as the `attempts` view gives them."""
    return [{"trace_id": trace_id, "n": n, **dict(zip(ATTEMPT_FIELDS, a))}
            for n, a in enumerate(loads_json(attempt_list) or [], 1)]


def rebuild_decision(trace: Mapping[str, Any]) -> dict[str, Any] | None:
    """Reassemble `Decision.to_dict()` from the decision, policy and candidate columns."""
    decision = loads_json(trace["decision"])
    if decision is None:
        return None
    if "policy" in decision:
        decision["policy"]["canonical"] = loads_json(trace["policy"])
    decision["candidates"] = [{
        "id": c["entry_id"], "provider": c["provider"], "model": c["model"],
        "passed": bool(c["passed"]),
        "failed": None if c["passed"] else {
            "index": c["failed_index"], "id": c["failed_clause_id"],
            "rule": loads_json(c["failed_rule"]), "field": c["failed_field"],
            "value": loads_json(c["failed_value"])},
    } for c in trace["candidates"]]
    return decision
