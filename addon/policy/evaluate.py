"""evaluate(policy, catalog, request) -> Decision: filter, rank, select, fallback order.

Hot path: request-independent clauses are decided once per (policy, catalog
version) and memoised on the policy; per request only the survivors see the
dynamic clauses (est_cost, health), the implicit fit checks and the sort.
Full per-entry verdicts (which clause dropped what, with the entry's value) are
computed lazily, in policy order, when a trace or a dry run asks for them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from ..catalog import Catalog, CatalogEntry
from ..fields import DYNAMIC_FIELDS
from .model import Clause, Policy, Row

DEFAULT_OUT_TOKENS = 256
IMAGE_TOKENS = 85  # a low-detail image; enough to route on, not to bill


class LiveHealth(Protocol):
    def live_fields(self, entry_id: str) -> Mapping[str, Any]: ...


def _text_len(content: Any) -> tuple[int, bool]:
    """(characters of text, has an image part) of one message's content."""
    if isinstance(content, str):
        return len(content), False
    chars, image = 0, False
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, Mapping):
                continue
            kind = part.get("type")
            if kind in ("image_url", "input_image", "image"):
                image = True
                chars += IMAGE_TOKENS * 4
            elif isinstance(part.get("text"), str):
                chars += len(part["text"])
    return chars, image


@dataclass(frozen=True, slots=True)
class RequestProfile:
    """What the router needs to know about one chat request."""

    model: str | None = None
    prompt_tokens: int = 0
    max_tokens: int | None = None
    tools: bool = False
    vision: bool = False
    stream: bool = False

    @property
    def out_tokens(self) -> int:
        return self.max_tokens if self.max_tokens is not None else DEFAULT_OUT_TOKENS

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> RequestProfile:
        """Estimate from an OpenAI chat body: ~4 characters per token, +4 per message."""
        chars, vision, n = 0, False, 0
        messages = body.get("messages")
        if isinstance(messages, list):
            for m in messages:
                if isinstance(m, Mapping):
                    c, img = _text_len(m.get("content"))
                    chars += c
                    vision |= img
                    n += 1
        tools = body.get("tools") or body.get("functions")
        if tools:
            chars += len(json.dumps(tools, default=str))
        mt = body.get("max_completion_tokens", body.get("max_tokens"))
        max_tokens = mt if isinstance(mt, int) and not isinstance(mt, bool) and mt >= 0 else None
        model = body.get("model")
        return cls(model if isinstance(model, str) else None, chars // 4 + 4 * n + 3, max_tokens,
                   bool(tools), vision, body.get("stream") is True)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "prompt_tokens": self.prompt_tokens, "max_tokens": self.max_tokens,
                "out_tokens": self.out_tokens, "tools": self.tools, "vision": self.vision, "stream": self.stream}


def est_cost(entry: CatalogEntry, req: RequestProfile) -> float:
    return (req.prompt_tokens * entry.price_in + req.out_tokens * entry.price_out) / 1_000_000


def fit_failure(entry: CatalogEntry, req: RequestProfile) -> tuple[str, str, Any] | None:
    """The implicit request-fit checks: (check id, field, entry value) of the first that fails."""
    if req.prompt_tokens + (req.max_tokens or 0) > entry.context_window:
        return "fit:context_window", "context_window", entry.context_window
    if req.max_tokens is not None and req.max_tokens > entry.max_output:
        return "fit:max_output", "max_output", entry.max_output
    if req.tools and "tools" not in entry.capabilities:
        return "fit:tools", "capabilities", list(entry.capabilities)
    if req.vision and "vision" not in entry.capabilities:
        return "fit:vision", "capabilities", list(entry.capabilities)
    return None


FIT_RULES = {
    "fit:context_window": "prompt_tokens + max_tokens <= context_window",
    "fit:max_output": "max_tokens <= max_output",
    "fit:tools": "request has tools: capabilities must include 'tools'",
    "fit:vision": "request has images: capabilities must include 'vision'",
}


@dataclass(frozen=True, slots=True)
class Failure:
    index: int | None
    id: str
    rule: Any
    field: str
    value: Any

    def reason(self) -> str:
        return f"{self.id} failed: {json.dumps(self.rule)} (actual {self.field}={json.dumps(self.value, default=str)})"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "rule": self.rule, "field": self.field, "value": self.value}


@dataclass(frozen=True, slots=True)
class Ranked:
    entry: CatalogEntry
    est_cost: float
    keys: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        e = self.entry
        return {"id": e.id, "provider": e.provider, "model": e.model, "est_cost": self.est_cost, "keys": dict(self.keys)}


def _row(entry: CatalogEntry, base: Row, req: RequestProfile, health: LiveHealth | None) -> dict[str, Any]:
    """The entry's fields plus the per-request ones (est_cost, healthy, latency_ms)."""
    row = dict(base)
    row["est_cost"] = est_cost(entry, req)
    live = health.live_fields(entry.id) if health is not None else {}
    row["healthy"] = live.get("healthy", True)
    row["latency_ms"] = live.get("latency_ms")
    return row


def _static_survivors(policy: Policy, catalog: Catalog) -> tuple[int, ...]:
    hit = policy.memo.get(catalog.version)
    if hit is None:
        static = policy.static_clauses
        hit = tuple(i for i, row in enumerate(catalog.rows) if all(c.test(row) for c in static))
        if len(policy.memo) > 4:  # catalogs are reloaded rarely; keep the newest few
            policy.memo.clear()
        policy.memo[catalog.version] = hit
    return hit


def _sort(items: list[Ranked], rank: Sequence[tuple[str, str]]) -> None:
    # Stable sorts from the last key to the first give a total, deterministic order;
    # missing values sort last in either direction.
    for direction, f in reversed(rank):
        if direction == "asc":
            items.sort(key=lambda r: (r.keys[f] is None, r.keys[f]))
        else:
            items.sort(key=lambda r: (r.keys[f] is not None, r.keys[f]), reverse=True)


@dataclass(frozen=True)
class Decision:
    policy: Policy
    catalog: Catalog
    request: RequestProfile
    ranked: tuple[Ranked, ...]
    health: LiveHealth | None = field(default=None, repr=False)

    @property
    def plan(self) -> tuple[Ranked, ...]:
        return self.ranked[: self.policy.max_attempts]

    @property
    def selected(self) -> Ranked | None:
        return self.ranked[0] if self.ranked else None

    @property
    def fallback(self) -> tuple[Ranked, ...]:
        return self.plan[1:]

    @cached_property
    def verdicts(self) -> tuple[tuple[CatalogEntry, Failure | None], ...]:
        """Every catalog entry with its first failing clause (policy order), or None if it passed."""
        out = []
        for entry, base in zip(self.catalog.entries, self.catalog.rows):
            out.append((entry, self._first_failure(entry, base)))
        return tuple(out)

    def _first_failure(self, entry: CatalogEntry, base: Row) -> Failure | None:
        row = _row(entry, base, self.request, self.health)
        c: Clause
        for c in self.policy.clauses:
            if not c.test(row):
                return Failure(c.index, c.label, c.rule, ",".join(c.fields), c.actual(row))
        fit = fit_failure(entry, self.request)
        if fit:
            return Failure(None, fit[0], FIT_RULES[fit[0]], fit[1], fit[2])
        return None

    def dropped(self) -> list[dict[str, Any]]:
        """Why each dropped entry was dropped (the `no_candidate` error body): shaped like a candidate."""
        return [{"id": e.id, "provider": e.provider, "model": e.model, "reason": f.reason(), "failed": f.to_dict()}
                for e, f in self.verdicts if f is not None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.summary(),
            "catalog_version": self.catalog.version,
            "request": self.request.to_dict(),
            "candidates": [{"id": e.id, "provider": e.provider, "model": e.model, "passed": f is None,
                            "failed": f.to_dict() if f else None} for e, f in self.verdicts],
            "ranked": [r.to_dict() for r in self.ranked],
            "selected": self.selected.entry.id if self.selected else None,
            "fallback": [r.entry.id for r in self.fallback],
        }


def evaluate(policy: Policy, catalog: Catalog, request: RequestProfile | None = None,
             health: LiveHealth | None = None) -> Decision:
    """Filter every entry, rank the survivors, select the first; fallback is the rest of the plan."""
    req = request or RequestProfile()
    dynamic = policy.dynamic_clauses
    rank_fields = [f for _, f in policy.rank]
    # Building a full row per survivor is the costly part; skip it when nothing needs it.
    needs_row = bool(dynamic) or health is not None or any(f in DYNAMIC_FIELDS for f in rank_fields
                                                            if f != "est_cost")
    ranked: list[Ranked] = []
    cooled: set[str] = set()
    entries, rows = catalog.entries, catalog.rows
    for i in _static_survivors(policy, catalog):
        entry = entries[i]
        if fit_failure(entry, req) is not None:
            continue
        if needs_row:
            row: Row = _row(entry, rows[i], req, health)
            if dynamic and not all(c.test(row) for c in dynamic):
                continue
            if not row["healthy"]:
                cooled.add(entry.id)
            cost = row["est_cost"]
        else:
            row, cost = rows[i], est_cost(entry, req)
        ranked.append(Ranked(entry, cost, {f: cost if f == "est_cost" else row.get(f) for f in rank_fields}))
    _sort(ranked, policy.rank)
    if cooled:  # a cooled-down entry is tried only after every healthy one
        ranked.sort(key=lambda r: r.entry.id in cooled)
    return Decision(policy, catalog, req, tuple(ranked), health)
