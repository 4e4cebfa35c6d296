"""Shared trace parts: what repeats call after call, stored once under a content key.

    PolicyPart     a policy as traces show it: fingerprint, digest, canonical JSON, summary JSON
    DecisionPart   per (policy, catalog version, request-fit class, health state, ranked order):
                   every catalog entry's verdict, rank and prices, and the ranked entries' sort keys
    PartCache      Decision -> its parts, memoised (bounded): a repeated decision costs no JSON
    legacy_columns a trace's inline columns (`policy`, `decision`, candidate rows) from its parts

A trace row references its decision part by `part` (the policy part through
it); what differs call after call stays in the row: ids, times, the request's
tokens, attempts, outcome, usage, cost. Each ranked entry's est_cost is
`usd(prompt_tokens, out_tokens, price_in, price_out)` (policy/request.py) of
the row's request and the part's prices; a row whose decision that does not
reproduce to the last bit keeps its costs itself (`costs`).

A key is the first 16 hex digits of a sha256 over the part's content (64 bits:
a collision is not expected below ~10^9 distinct parts per database).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from ..policy import Decision, Failure, Policy, RequestProfile, static_failures
from ..policy.request import usd
from .scrub import dumps, dumps_json, maybe_secret, scrub, string_leaves

# The `candidates` view's columns (stored per trace before the `shared_parts` migration; est_cost is per request).
CANDIDATE_COLUMNS = ("entry_id", "provider", "model", "passed", "failed_index", "failed_clause_id",
                     "failed_rule", "failed_field", "failed_value", "rank", "est_cost")
# A decision part's candidate arrays: the same, with the prices est_cost is computed from.
PART_COLUMNS = (*CANDIDATE_COLUMNS[:-1], "price_in", "price_out")
LIVE_FIELDS = ("healthy", "latency_ms")


def content_key(*texts: str | None) -> str:
    return hashlib.sha256("\n".join(t or "" for t in texts).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class PolicyPart:
    key: str
    fingerprint: str
    digest: str
    policy: str | None     # the canonical policy_ir (the inline `policy` column)
    summary: str           # Policy.summary() without `canonical` (the inline decision's `policy`)
    leaves: str            # its strings, for the no_log check (scrub.mentions)

    def row(self) -> tuple[Any, ...]:
        return (self.key, self.fingerprint, self.digest, self.policy, self.summary)


@dataclass(frozen=True, slots=True)
class DecisionPart:
    key: str
    policy: PolicyPart
    catalog_version: str
    candidates: str                          # JSON: one PART_COLUMNS array per catalog entry
    keys: str                                # JSON: per ranked entry, its sort-key values (null: est_cost)
    prices: tuple[tuple[float, float], ...]  # per ranked entry: (price_in, price_out)
    leaves: str

    def row(self) -> tuple[Any, ...]:
        return (self.key, self.policy.key, self.catalog_version, self.candidates, self.keys)

    def costs_of(self, request: RequestProfile) -> tuple[float, ...]:
        """The est_cost of each ranked entry for `request` (`usd` of the part's prices)."""
        pt, ot = request.prompt_tokens, request.out_tokens
        return tuple([usd(pt, ot, pin, pout) for pin, pout in self.prices])


def _failure(f: Failure) -> tuple[Any, ...]:
    return (f.index, scrub(f.id), dumps_json(f.rule), f.field, dumps_json(f.value))


class PartCache:
    """The parts of recent decisions, by what determines them. One per TraceStore (per thread)."""

    def __init__(self, maxsize: int = 1024) -> None:
        self._policies: LRUCache[str, PolicyPart] = LRUCache(maxsize=256)
        self._decisions: LRUCache[tuple[Any, ...], DecisionPart] = LRUCache(maxsize=maxsize)
        self._static: LRUCache[tuple[str, str], dict[int, tuple[Any, ...]]] = LRUCache(maxsize=256)

    def __len__(self) -> int:
        return len(self._decisions)

    def policy(self, p: Policy) -> PolicyPart:
        hit = self._policies.get(p.identity)
        if hit is None:
            summary = {k: v for k, v in p.summary().items() if k != "canonical"}
            policy_json, summary_json = dumps_json(p.canonical), dumps_json(summary) or "null"
            hit = self._policies[p.identity] = PolicyPart(
                content_key(policy_json, summary_json), p.fingerprint, p.digest, policy_json, summary_json,
                string_leaves([json.loads(policy_json or "null"), json.loads(summary_json)]))
        return hit

    def decision(self, d: Decision) -> DecisionPart:
        """The part of `d`: looked up by (policy, catalog version, ranked order, the verdicts not
        known from the policy and catalog alone, live sort keys), built on a miss."""
        fresh = tuple((i, None) if f is None else (i, f.index, f.id, f.field, repr(f.value))
                      for i, f in d.request_verdicts)
        live: tuple[Any, ...] = ()
        if d.health is not None and any(f in LIVE_FIELDS for _, f in d.policy.rank):
            live = tuple(tuple(d.health.live_fields(d.catalog.entries[i].id).get(f) for f in LIVE_FIELDS)
                         for i in d.order)
        memo_key = (d.policy.identity, d.catalog.version, d.order, fresh, live)
        hit = self._decisions.get(memo_key)
        if hit is None:
            hit = self._decisions[memo_key] = self._build(d)
        return hit

    def _build(self, d: Decision) -> DecisionPart:
        policy = self.policy(d.policy)
        static = static_failures(d.policy, d.catalog)
        id_ = (d.policy.identity, d.catalog.version)
        dumped = self._static.get(id_)
        if dumped is None:
            dumped = self._static[id_] = {i: _failure(f) for i, f in static.items()}
        rank = {i: n for n, i in enumerate(d.order, 1)}
        rows = []
        for i, (entry, f) in enumerate(d.verdicts):
            parts = (dumped[i] if f is static.get(i) else _failure(f)) if f is not None else (None,) * 5
            r = rank.get(i)
            rows.append([entry.id, entry.provider, entry.model, int(f is None), *parts, r,
                         entry.price_in if r else None, entry.price_out if r else None])
        keys = [[None if f == "est_cost" else v for f, v in r.keys.items()] for r in d.ranked]
        candidates, keys_json = dumps_json(rows) or "[]", dumps_json(keys) or "[]"
        prices = tuple((d.catalog.entries[i].price_in, d.catalog.entries[i].price_out) for i in d.order)
        key = content_key(policy.key, d.catalog.version, candidates, keys_json)
        return DecisionPart(key, policy, d.catalog.version, candidates, keys_json, prices,
                            string_leaves([json.loads(candidates), json.loads(keys_json), d.catalog.version]))


def legacy_columns(policy_json: str | None, summary_json: str, catalog_version: str,
                   candidates: Sequence[Sequence[Any]], keys: Sequence[Sequence[Any]],
                   request: RequestProfile, costs: Sequence[float]) -> tuple[str, list[list[Any]]]:
    """A trace's inline `decision` column and candidate rows (CANDIDATE_COLUMNS), exactly as the
    writer before the `shared_parts` migration made them, from its parts, its request and its ranked entries' costs."""
    summary = json.loads(summary_json)
    rank_fields = [f for _, f in (json.loads(policy_json) or {}).get("rank") or []] if policy_json else []
    order = sorted((c[9], n) for n, c in enumerate(candidates) if c[9] is not None)
    ranked = []
    for (_, n), values, cost in zip(order, keys, costs):
        c = candidates[n]
        ranked.append({"id": c[0], "provider": c[1], "model": c[2], "est_cost": cost,
                       "keys": {f: cost if f == "est_cost" else v for f, v in zip(rank_fields, values)}})
    attempts = summary.get("max_attempts") if isinstance(summary, dict) else None
    fallback = [r["id"] for r in ranked[1:attempts if isinstance(attempts, int) else None]]
    rest = '{"catalog_version":%s,"fallback":%s,"policy":%s,"ranked":%s,"request":%s,"selected":%s}' % (
        dumps(catalog_version), dumps(fallback), summary_json, dumps_json(ranked),
        dumps_json(request.to_dict()), dumps(ranked[0]["id"] if ranked else None))
    if maybe_secret(rest):
        rest = dumps_json(json.loads(rest)) or rest
    cost_of = {n: cost for (_, n), cost in zip(order, costs)}
    rows = [[*c[:10], cost_of.get(n)] for n, c in enumerate(candidates)]
    return rest, rows
