"""Parsed policies: immutable, fingerprinted at parse time, with compiled predicates."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..errors import InvalidPolicy
from ..fields import DEFAULT_REGISTRY, DYNAMIC_FIELDS, FieldRegistry
from .ops import (DEFAULT_MAX_ATTEMPTS, DEFAULT_RANK, MAX_CLAUSES, SCHEMA, TIE_BREAK, Predicate, Row, canon_key,
                  compile_expr, expr_fields)
from .validate import Checked, check, decode

@dataclass(frozen=True, eq=False)
class Clause:
    index: int
    id: str | None
    from_: str | None
    rule: Any
    normal: Any
    test: Predicate = field(repr=False)
    fields: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.id or f"rules[{self.index}]"

    @property
    def dynamic(self) -> bool:
        return any(f in DYNAMIC_FIELDS for f in self.fields)

    def actual(self, row: Row) -> Any:
        """The entry's value(s) this clause looked at, for traces."""
        if len(self.fields) == 1:
            return row.get(self.fields[0])
        return {f: row.get(f) for f in self.fields}

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "from": self.from_, "rule": self.rule}


@dataclass(frozen=True, eq=False)
class Policy:
    clauses: tuple[Clause, ...]
    rank: tuple[tuple[str, str], ...]
    max_attempts: int
    no_log: bool
    canonical: Mapping[str, Any]
    digest: str
    explicit: frozenset[str] = frozenset()
    # digest + how it was written (clause ids, origins, rules as written, explicit keys):
    # two policies with one digest may still trace differently, so caches key on this.
    identity: str = ""
    schema: str = SCHEMA
    # Per-catalog memo of entries passing the request-independent clauses (see evaluate.py).
    memo: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def fingerprint(self) -> str:
        return "pol_" + self.digest[:6]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def reads(self, field_name: str) -> bool:
        """True if a clause or a sort key looks at `field_name`."""
        return field_name in self.fields_read

    @cached_property
    def fields_read(self) -> frozenset[str]:
        """Every field a clause or a sort key looks at (computed once: `reads` is on the hot path)."""
        return frozenset(f for c in self.clauses for f in c.fields) | {f for _, f in self.rank}

    @cached_property
    def static_clauses(self) -> tuple[Clause, ...]:
        return tuple(c for c in self.clauses if not c.dynamic)

    @cached_property
    def dynamic_clauses(self) -> tuple[Clause, ...]:
        return tuple(c for c in self.clauses if c.dynamic)

    def to_ir(self) -> dict[str, Any]:
        """policy_ir with clause ids and origins, re-parseable to an equal policy."""
        return {"schema": self.schema, "rules": [_clause_ir(c.rule, c.id, c.from_) for c in self.clauses],
                "rank": [list(k) for k in self.rank], "fallback": {"max_attempts": self.max_attempts},
                "no_log": self.no_log}

    def summary(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "digest": self.digest, "schema": self.schema,
                "canonical": self.canonical, "no_log": self.no_log, "max_attempts": self.max_attempts,
                "clauses": [c.to_dict() for c in self.clauses]}


def _clause_ir(rule: Any, id_: str | None, from_: str | None) -> Any:
    """One clause as policy_ir writes it: the bare expression unless it has an id or origin."""
    if id_ is None and from_ is None:
        return rule
    return {"rule": rule, **({"id": id_} if id_ is not None else {}), **({"from": from_} if from_ is not None else {})}


def ir_from_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """policy_ir rebuilt from a stored `Policy.summary()` (a trace's policy), as `to_ir()` gives it."""
    ir: dict[str, Any] = {
        "schema": summary.get("schema", SCHEMA),
        "rules": [_clause_ir(c["rule"], c.get("id"), c.get("from")) for c in summary.get("clauses") or []],
        "fallback": {"max_attempts": summary.get("max_attempts", DEFAULT_MAX_ATTEMPTS)},
        "no_log": bool(summary.get("no_log"))}
    rank = (summary.get("canonical") or {}).get("rank")
    if rank:
        ir["rank"] = rank
    return ir


def canonical_rank(rank: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """Later keys on an already-used field never matter, nor any key after the unique `id`;
    `id` always breaks ties last."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for d, f in rank:
        if f not in seen:
            seen.add(f)
            out.append((d, f))
        if f == "id":
            return tuple(out)
    out.append(TIE_BREAK)
    return tuple(out)


def canonical_form(checked: Checked) -> dict[str, Any]:
    rules: dict[str, Any] = {}  # clauses are ANDed: split a top-level `and`, sort, de-duplicate
    for c in checked.clauses:
        for x in (c.normal[1:] if c.normal[0] == "and" else [c.normal]):
            rules[canon_key(x)] = x
    return {
        "schema": SCHEMA,
        "rules": [rules[k] for k in sorted(rules)],
        "rank": [list(k) for k in canonical_rank(DEFAULT_RANK if checked.rank is None else checked.rank)],
        "fallback": {"max_attempts": checked.max_attempts},
        "no_log": checked.no_log,
    }


def digest_of(canonical: Mapping[str, Any]) -> str:
    blob = SCHEMA + "\n" + json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def build_policy(checked: Checked) -> Policy:
    canonical = canonical_form(checked)
    clauses = tuple(
        Clause(c.index, c.id, c.from_, c.rule, c.normal, compile_expr(c.normal), expr_fields(c.normal))
        for c in checked.clauses
    )
    digest = digest_of(canonical)
    written = json.dumps([sorted(checked.explicit), [[c.id, c.from_, c.rule] for c in checked.clauses]],
                         sort_keys=True, default=str)
    identity = digest + ":" + hashlib.sha256(written.encode()).hexdigest()[:16]
    return Policy(clauses, canonical_rank(DEFAULT_RANK if checked.rank is None else checked.rank), checked.max_attempts, checked.no_log,
                  canonical, digest, checked.explicit, identity=identity)


def parse_policy(source: str | bytes | Mapping[str, Any],
                 registry: FieldRegistry | None = None) -> Policy:
    """Parse and validate policy_ir (JSON text or object); raise InvalidPolicy with every error."""
    obj, errors = decode(source)
    if not errors:
        errors, checked = check(obj, registry or DEFAULT_REGISTRY)
    if errors:
        raise InvalidPolicy([e.to_dict() for e in errors])
    assert checked is not None
    return build_policy(checked)


def fingerprint(source: str | bytes | Mapping[str, Any], registry: FieldRegistry | None = None) -> str:
    return parse_policy(source, registry).fingerprint


def combine(tenant: Policy, request: Policy, registry: FieldRegistry | None = None) -> Policy:
    """Conjunction: the request narrows its tenant's policy and can never loosen it.

    Rules: both sets. no_log: either. max_attempts: the smaller. rank: the
    request's if it set one (ordering never admits a dropped entry), else the tenant's.
    """
    if len(tenant.clauses) + len(request.clauses) > MAX_CLAUSES:
        raise InvalidPolicy([{"path": "rules", "message": (
            f"the request's {len(request.clauses)} clause(s) and its tenant's {len(tenant.clauses)} "
            f"together exceed {MAX_CLAUSES} clauses")}])
    t, r = tenant.to_ir(), request.to_ir()
    req_rules = []
    for rule, c in zip(r["rules"], request.clauses):
        if c.from_ is None:
            rule = {"rule": c.rule, "from": "request", **({"id": c.id} if c.id else {})}
        req_rules.append(rule)
    ir = {
        "schema": SCHEMA,
        "rules": t["rules"] + req_rules,
        "rank": r["rank"] if "rank" in request.explicit else t["rank"],
        "fallback": {"max_attempts": min(tenant.max_attempts, request.max_attempts)
                     if "fallback" in request.explicit else tenant.max_attempts},
        "no_log": tenant.no_log or request.no_log,
    }
    return parse_policy(ir, registry)
