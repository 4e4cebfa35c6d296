"""Per-request clauses, split for the hot loop of `evaluate`, and live health as it reads it.

A clause on `est_cost` alone is one cost interval; a clause on `healthy` alone (besides
static entry fields) is decided per entry for both health states, once per (policy,
catalog). Only the rest is tested per request on a small row. `HealthSnapshot` is the
health a Decision keeps, so that verdicts computed later tell what the router saw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..fields import DYNAMIC_FIELDS
from .model import Clause


class LiveHealth(Protocol):
    """Health as evaluation reads it (`HealthTracker`, or a snapshot of it)."""

    def live_fields(self, entry_id: str) -> Mapping[str, Any]:
        """`healthy` and `latency_ms` of one entry."""
        ...

    def cooled_ids(self) -> frozenset[str]:
        """The entries cooling down (not `healthy`) right now."""
        ...


class HealthSnapshot:
    """Live health as it was when a request was decided: what a Decision keeps, so that its
    verdicts and sort keys, computed later (in a trace writer), tell what the router saw."""

    __slots__ = ("cooled", "latency")

    def __init__(self, cooled: frozenset[str], latency: Mapping[str, float | None]) -> None:
        self.cooled, self.latency = cooled, latency

    def cooled_ids(self) -> frozenset[str]:
        return self.cooled

    def live_fields(self, entry_id: str) -> dict[str, Any]:
        return {"healthy": entry_id not in self.cooled, "latency_ms": self.latency.get(entry_id)}


_CMP_BOUND = {"ge": (1, 0.0), "gt": (1, math.inf), "le": (-1, 0.0), "lt": (-1, -math.inf)}


def cost_bound(clause: Clause) -> tuple[float, float] | None:
    """A clause `["cmp", "est_cost", op, n]` as the closed float interval [lo, hi] of costs
    passing it (a strict bound is the next float towards the inside), or None for any other
    clause. Lets the per-request loop test `lo <= cost <= hi` instead of calling the clause."""
    e = clause.normal
    if not (isinstance(e, list) and len(e) == 4 and e[0] == "cmp" and e[1] == "est_cost"):
        return None
    n = e[3]
    if isinstance(n, bool) or not isinstance(n, (int, float)) or float(n) != n:
        return None  # NaN, or an int a float cannot hold exactly: let the clause decide
    side, towards = _CMP_BOUND[e[2]]
    edge = float(n) if towards == 0.0 else math.nextafter(float(n), towards)
    return (edge, math.inf) if side == 1 else (-math.inf, edge)


def both_states(clauses: Sequence[Clause], fields: Sequence[str], values: Sequence[Any]) -> tuple[bool, bool]:
    """Whether an entry with these `values` of `fields` passes `clauses` while healthy, and while cooled."""
    row: dict[str, Any] = dict(zip(fields, values))
    out = []
    for healthy in (True, False):
        row["healthy"] = healthy
        out.append(all(c.test(row) for c in clauses))
    return out[0], out[1]


def health_only_clause(clause: Clause) -> bool:
    """Reads `healthy` and no other per-request field: decidable per entry for both states."""
    return {f for f in clause.fields if f in DYNAMIC_FIELDS} == {"healthy"}
