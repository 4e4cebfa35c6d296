"""evaluate(policy, catalog, request) -> Decision: filter, rank, select, fallback order.

Hot path: request-independent clauses are decided once per (policy, catalog
version) and memoised on the policy; per request only the survivors see the
dynamic clauses (est_cost, health), the implicit fit checks and the sort.
Full per-entry verdicts (which clause dropped what, with the entry's value) are
computed lazily, in policy order, when a trace or a dry run asks for them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from operator import itemgetter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

from ..catalog import Catalog, CatalogEntry
from ..fields import DYNAMIC_FIELDS
from .dynamic import HealthSnapshot, LiveHealth, both_states, cost_bound, health_only_clause
from .model import Clause, Policy, Row
from .request import FIT_RULES, RequestProfile, est_cost, fit_failure

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


class StaticRow(NamedTuple):
    """An entry passing every request-independent clause, pre-unpacked for the per-request
    loop: the fields, in the order `_static` builds them and the loop unpacks them."""

    index: int                   # in the catalog
    entry: CatalogEntry
    id: str
    price_in: float
    price_out: float
    context_window: int
    max_output: int
    tools: bool                  # "tools" in capabilities
    vision: bool                 # "vision" in capabilities
    ok_healthy: bool             # passes the health-only clauses while healthy...
    ok_cooled: bool              # ...and while cooling down
    parts: tuple[Any, ...]       # sort-key parts known statically (_DYN where the request decides)
    prefix: tuple[Any, ...]      # fast path: the parts before est_cost...
    suffix: tuple[Any, ...]      # ...and after it

    # Stored as plain tuples of these fields (`_Static.rows`): CPython unpacks an exact tuple
    # fast, a NamedTuple (a tuple subclass) about 2.5x slower, and building one per entry
    # costs the first evaluation of a policy ~10%.


@dataclass(frozen=True, slots=True)
class _Static:
    """Per (policy, catalog version): the entries passing every request-independent
    clause, pre-unpacked into what the per-request loop needs, and the per-request
    clauses split by how cheaply they can be tested."""

    rows: tuple[tuple[Any, ...], ...]   # StaticRow's fields, as plain tuples
    composed: bool                       # one composed sort key is enough (no descending strings)
    cost_at: int | None                  # fast path: est_cost is the only per-request sort key, here
    cost_sign: int = 1
    failures: Mapping[int, Failure] = field(default_factory=dict)  # first failing static clause
    dyn_static: tuple[str, ...] = ()     # entry fields the general per-request clauses also read
    cost_lo: float = -math.inf           # est_cost clauses, as one interval
    cost_hi: float = math.inf
    health_checked: bool = False         # some clause reads only `healthy` (ok_healthy/ok_cooled)
    general: tuple[Clause, ...] = ()     # the other per-request clauses: tested on a small row
    reads_latency: bool = False
    # Entries whose first failing clause is a static one whatever the request (no per-request
    # clause comes before it), and every catalog index: what `Decision.verdicts` need not recompute.
    explained: frozenset[int] = frozenset()
    all_indices: frozenset[int] = frozenset()
    # The fit checks every row passes for a request within these bounds (smallest context window,
    # smallest max_output, all have tools, all have vision), and the rows as the comprehension of
    # `evaluate`'s fast path reads them: (index, price_in, price_out, ok_healthy, suffix).
    fit_all: tuple[int, int, bool, bool] = (0, 0, False, False)
    cost_rows: tuple[tuple[Any, ...], ...] = ()


_DYN = object()  # placeholder for a sort-key part known only per request


def _key_part(direction: str, v: Any) -> tuple[bool, Any]:
    """One component of a composed ascending sort key; missing values last either way."""
    if v is None:
        return (True, 0)
    if direction == "desc":
        return (False, -v)   # numbers and booleans only (checked by the caller)
    return (False, v)


def _static(policy: Policy, catalog: Catalog) -> _Static:
    hit = policy.memo.get(catalog.version)
    if hit is not None:
        return hit
    static = policy.static_clauses
    reg = catalog.registry
    # One composed key works unless a descending key is a string (those cannot be negated).
    composed = all(d == "asc" or f in DYNAMIC_FIELDS or getattr(reg.get(f), "type", "string") != "string"
                   for d, f in policy.rank)
    dyn = [n for n, (_, f) in enumerate(policy.rank) if f in DYNAMIC_FIELDS]
    cost_at = dyn[0] if composed and len(dyn) == 1 and policy.rank[dyn[0]][1] == "est_cost" else None
    lo, hi = -math.inf, math.inf
    health_only: list[Clause] = []
    general: list[Clause] = []
    for c in policy.dynamic_clauses:
        if (bound := cost_bound(c)) is not None:
            lo, hi = max(lo, bound[0]), min(hi, bound[1])
        elif health_only_clause(c):
            health_only.append(c)
        else:
            general.append(c)
    health_reads = tuple(dict.fromkeys(f for c in health_only for f in c.fields if f not in DYNAMIC_FIELDS))
    health_ok: dict[tuple[Any, ...], tuple[bool, bool]] = {}
    rows: list[tuple[Any, ...]] = []
    failures: dict[int, Failure] = {}
    for i, (entry, row) in enumerate(zip(catalog.entries, catalog.rows)):
        failed = next((c for c in static if not c.test(row)), None)
        if failed is not None:
            failures[i] = Failure(failed.index, failed.label, failed.rule, ",".join(failed.fields), failed.actual(row))
        else:
            parts = tuple(_DYN if f in DYNAMIC_FIELDS else _key_part(d, row.get(f)) if composed else row.get(f)
                          for d, f in policy.rank)
            ok = (True, True)
            if health_only:  # decided once per distinct value of the entry fields those clauses read
                values = tuple(row.get(f) for f in health_reads)
                ok = health_ok.get(values) or health_ok.setdefault(values, both_states(health_only, health_reads, values))
            caps = entry.capabilities
            k = cost_at if cost_at is not None else 0
            # A StaticRow's fields, built as a plain tuple (see StaticRow).
            rows.append((i, entry, entry.id, entry.price_in, entry.price_out, entry.context_window,
                         entry.max_output, "tools" in caps, "vision" in caps, ok[0], ok[1],
                         parts, parts[:k], parts[k + 1:]))
    dyn_static = tuple(dict.fromkeys(f for c in general for f in c.fields if f not in DYNAMIC_FIELDS))
    # A cached static failure is the first failure unless a per-request clause comes before it.
    first_dynamic = min((c.index for c in policy.dynamic_clauses), default=1 << 30)
    explained = frozenset(i for i, f in failures.items() if f.index is not None and f.index < first_dynamic)
    fit_all = (min((r[5] for r in rows), default=0), min((r[6] for r in rows), default=0),
               all(r[7] for r in rows), all(r[8] for r in rows))
    hit = _Static(tuple(rows), composed, cost_at,
                  -1 if cost_at is not None and policy.rank[cost_at][0] == "desc" else 1, failures, dyn_static,
                  lo, hi, bool(health_only), tuple(general), policy.reads("latency_ms"), explained,
                  frozenset(range(len(catalog.entries))), fit_all,
                  tuple((r[0], r[3], r[4], r[9], r[13]) for r in rows))
    if len(policy.memo) > 4:  # catalogs are reloaded rarely; keep the newest few
        policy.memo.clear()
    policy.memo[catalog.version] = hit
    return hit


@dataclass(frozen=True)
class Decision:
    """The evaluation result. `order` holds the ranked survivors (catalog indices) and
    their est. costs; `Ranked` objects with sort keys are built only when asked for."""

    policy: Policy
    catalog: Catalog
    request: RequestProfile
    order: tuple[int, ...]
    costs: tuple[float, ...]
    health: LiveHealth | None = field(default=None, repr=False)

    @cached_property
    def entries(self) -> tuple[CatalogEntry, ...]:
        """The ranked survivors, best first: what fallback walks."""
        entries = self.catalog.entries
        return tuple(entries[i] for i in self.order)

    def _ranked(self, n: int) -> Ranked:
        entry, cost = self.catalog.entries[self.order[n]], self.costs[n]
        row = self.catalog.rows[self.order[n]]
        live = self.health.live_fields(entry.id) if self.health is not None else {}
        keys = {f: cost if f == "est_cost" else live.get(f) if f in live else row.get(f)
                for _, f in self.policy.rank}
        return Ranked(entry, cost, keys)

    @cached_property
    def ranked(self) -> tuple[Ranked, ...]:
        return tuple(self._ranked(n) for n in range(len(self.order)))

    @property
    def plan(self) -> tuple[Ranked, ...]:
        return self.ranked[: self.policy.max_attempts]

    @property
    def selected(self) -> Ranked | None:
        return self._ranked(0) if self.order else None

    @property
    def fallback(self) -> tuple[Ranked, ...]:
        return self.plan[1:]

    @cached_property
    def request_verdicts(self) -> tuple[tuple[int, Failure | None], ...]:
        """(catalog index, first failing clause) of every dropped entry that the request-independent
        clauses do not explain: dropped by a fit check or a per-request clause. Every other dropped
        entry's verdict is its (shared, memoised) `static_failures` one. Usually empty."""
        st = _static(self.policy, self.catalog)
        unexplained = st.all_indices - set(self.order) - st.explained
        entries, rows = self.catalog.entries, self.catalog.rows
        return tuple((i, self._first_failure(entries[i], rows[i])) for i in sorted(unexplained))

    @cached_property
    def verdicts(self) -> tuple[tuple[CatalogEntry, Failure | None], ...]:
        """Every catalog entry with its first failing clause (policy order), or None if it passed."""
        static = _static(self.policy, self.catalog).failures
        fresh = dict(self.request_verdicts)
        return tuple((entry, fresh[i] if i in fresh else static.get(i))
                     for i, entry in enumerate(self.catalog.entries))

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


def static_failures(policy: Policy, catalog: Catalog) -> Mapping[int, Failure]:
    """Catalog index -> first failing request-independent clause (shared, memoised objects)."""
    return _static(policy, catalog).failures


def evaluate(policy: Policy, catalog: Catalog, request: RequestProfile | None = None,
             health: LiveHealth | None = None) -> Decision:
    """Filter every entry, rank the survivors, select the first; fallback is the rest of the plan."""
    req = request or RequestProfile()
    st = _static(policy, catalog)
    general = st.general
    rank = policy.rank
    # Full rows (entry fields + est_cost + live health) only when a clause or a sort key needs them.
    needs_row = bool(general) or any(f in ("healthy", "latency_ms") for _, f in rank)
    pt, ot, mt = req.prompt_tokens, req.out_tokens, req.max_tokens
    need = pt + (mt or 0)
    tools, vision, apis = req.tools, req.vision, req.api_providers
    items: list[tuple[Any, ...]] = []
    # Hot path (`hot`): no general per-request clause and est_cost the only per-request sort key.
    # The sort key is (static prefix, ±cost, static suffix), precomputed but for the cost. Items
    # are flat tuples (sort key..., catalog index, cost): the index is unique, so the cost after
    # it is never compared; with est_cost first the key is (cost, suffix). Clauses on est_cost
    # alone are one interval test; clauses on `healthy` alone were decided per entry for both
    # states (ok_healthy, ok_cooled).
    hot = st.cost_at is not None and not general
    sign, first = st.cost_sign, st.cost_at == 0
    lo, hi = st.cost_lo, st.cost_hi
    bounded = lo != -math.inf or hi != math.inf
    check_health = st.health_checked
    cooled = health.cooled_ids() if health is not None else frozenset()
    latency: Mapping[str, float | None] = (
        {e.id: health.live_fields(e.id).get("latency_ms") for e in catalog.entries}
        if health is not None and st.reads_latency else {})
    snapshot = HealthSnapshot(cooled, latency) if health is not None else None
    min_cw, min_mo, all_tools, all_vision = st.fit_all
    if (hot and first and sign == 1 and not cooled and apis is None and need <= min_cw
            and (mt is None or mt <= min_mo) and (all_tools or not tools) and (all_vision or not vision)):
        # Fast path, the common request: every survivor fits, est_cost ascending is the first sort key,
        # nothing cools down. One comprehension (the loop below, minus the fit checks): (cost, suffix,
        # index) sorts as the loop's (cost, suffix, index, cost) does.
        fast = [(c, suffix, i) for i, pin, pout, ok_h, suffix in st.cost_rows
                if lo <= (c := (pt * pin + ot * pout) / 1_000_000) <= hi and ok_h]
        fast.sort()
        return Decision(policy, catalog, req, tuple([t[2] for t in fast]), tuple([t[0] for t in fast]), snapshot)
    for i, entry, eid, pin, pout, cw, mo, has_tools, has_vision, ok_h, ok_c, parts, prefix, suffix in st.rows:
        # `misfit` and `usd`, inlined: a call per entry costs this loop ~25% (measured);
        # tests/test_policy_evaluate.py pins this copy to them.
        if need > cw or (mt is not None and mt > mo) or (tools and not has_tools) or (vision and not has_vision):
            continue
        if apis is not None and entry.provider not in apis:
            continue
        cost = (pt * pin + ot * pout) / 1_000_000
        if bounded and not lo <= cost <= hi:
            continue
        if check_health and not (ok_c if eid in cooled else ok_h):
            continue
        if hot:
            if first:
                items.append((sign * cost, suffix, i, cost))
            else:
                items.append((prefix, sign * cost, suffix, i, cost))
            continue
        # General per-request clauses or sort keys: each survivor gets a small row with just
        # the fields they read (not a copy of the whole entry).
        row: dict[str, Any] | None = None
        if needs_row:
            base = catalog.rows[i]
            row = {f: base.get(f) for f in st.dyn_static}
            row["est_cost"], row["healthy"] = cost, eid not in cooled
            row["latency_ms"] = latency.get(eid)
            if not all([c.test(row) for c in general]):
                continue
        if st.cost_at is not None:
            items.append((prefix, sign * cost, suffix, i, cost))
            continue
        if row is not None:
            key = tuple(p if p is not _DYN else _key_part(d, row.get(f)) if st.composed else row.get(f)
                        for p, (d, f) in zip(parts, rank))
        else:  # the only dynamic sort key left is est_cost
            key = tuple(p if p is not _DYN else _key_part(d, cost) if st.composed else cost
                        for p, (d, _) in zip(parts, rank))
        items.append((key, i, cost))
    if st.composed:
        items.sort()
    else:  # descending strings: stable multi-pass sort, last key first
        for n in range(len(rank) - 1, -1, -1):
            d = rank[n][0]
            if d == "asc":
                items.sort(key=lambda t: (t[0][n] is None, t[0][n]))
            else:
                items.sort(key=lambda t: (t[0][n] is not None, t[0][n]), reverse=True)
    if cooled:  # a cooled-down entry is tried only after every healthy one
        items.sort(key=lambda t: catalog.entries[t[-2]].id in cooled)
    return Decision(policy, catalog, req, tuple(map(_INDEX, items)), tuple(map(_COST, items)), snapshot)


_INDEX, _COST = itemgetter(-2), itemgetter(-1)
