"""Validation of policy_ir v1: every error at once, as data with a path.

Modelled on jsonschema: one small checker per operator in a lookup table (the
operator table, `ops.OPS`), `iter_errors` yields all problems, the parser
raises them together. Checkers also return the expression in normal form
(numbers normalised, `in` lists sorted and de-duplicated) so the parser needs
only one walk. Validation only says what is wrong: defaults (rank, fallback)
are the model's business.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..fields import NUMERIC, Field, FieldRegistry
from .ops import (CMP_OPS, DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS, MAX_BYTES, MAX_CLAUSES, MAX_DEPTH, MAX_NODES,
                  MAX_RANK_KEYS, MAX_STRING, OPS, SCHEMA, shown, type_name)
from .spelling import meant_op, suggest, suggest_op

TOP_KEYS = ("schema", "rules", "rank", "fallback", "no_log")
CLAUSE_KEYS = ("id", "rule", "from")
RANK_DIRS = ("asc", "desc")


@dataclass(frozen=True)
class PolicyErrorItem:
    path: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


def norm_number(v: int | float) -> int | float:
    """1.0 -> 1, -0.0 -> 0: equal numbers get one canonical spelling."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


class _Walk:
    """State of one validation pass: the registry, the error sink and the node budget."""

    def __init__(self, registry: FieldRegistry) -> None:
        self.registry = registry
        self.errors: list[PolicyErrorItem] = []
        self.nodes = 0
        self.over_budget = False

    def err(self, path: str, message: str) -> None:
        self.errors.append(PolicyErrorItem(path, message))

    # -- expressions ---------------------------------------------------------------
    def expr(self, e: Any, path: str, depth: int) -> Any:
        """Validate one expression; return its normal form (None if invalid)."""
        self.nodes += 1
        if self.nodes > MAX_NODES:
            if not self.over_budget:
                self.err(path, f"policy too large: more than {MAX_NODES} expression nodes")
                self.over_budget = True
            return None
        if depth > MAX_DEPTH:
            self.err(path, f"expression nested deeper than {MAX_DEPTH} levels")
            return None
        if not isinstance(e, list) or not e:
            got = "an empty list" if isinstance(e, list) else type_name(e)
            self.err(path, f"an expression is a non-empty list like [\"eq\", field, value], got {got}")
            return None
        op = e[0]
        if not isinstance(op, str):
            self.err(f"{path}[0]", f"operator must be a string, got {type_name(op)}")
            return None
        spec = OPS.get(op)
        if spec is None:
            comparison = meant_op(op, CMP_OPS) if op.strip().lower().lstrip("$") not in OPS else None
            if comparison and len(e) == 3:  # ["gte", field, 0.5]: comparisons are spelt with "cmp"
                self.err(f"{path}[0]", f"unknown operator {shown(op)}: comparisons are written "
                                       f"[\"cmp\", field, \"{comparison}\", number]")
            else:
                self.err(f"{path}[0]", f"unknown operator {shown(op)}{suggest_op(op, OPS)}; "
                                       f"operators: {' '.join(OPS)}")
            return None
        return spec.check(self, e, path, depth)

    def field(self, e: list[Any], path: str, op: str) -> Field | None:
        """Common head of a leaf operator: arity and the field name. Returns the Field or None."""
        spec = OPS[op]
        arity = spec.arity or 0
        if len(e) != arity:
            self.err(path, f"{op!r} takes {arity - 1} arguments ({spec.usage}), got {len(e) - 1}")
            return None
        name = e[1]
        if not isinstance(name, str):
            self.err(f"{path}[1]", f"field name must be a string, got {type_name(name)}")
            return None
        f = self.registry.get(name)
        if f is None:
            self.err(f"{path}[1]", f"unknown field {shown(name)}{suggest(name, self.registry.names())}")
            return None
        if f.type not in spec.field_types:
            hint = " (use 'has')" if f.type == "list[string]" else ""
            self.err(path, f"operator {op!r} does not apply to field {name!r} of type {f.type}{hint}")
            return None
        return f

    def value(self, f: Field, v: Any, path: str) -> tuple[bool, Any]:
        if isinstance(v, float) and not math.isfinite(v):
            self.err(path, f"value for {f.name!r} must be a finite number")
            return False, None
        if not f.accepts(v):
            want = "string" if f.type == "list[string]" else f.type
            self.err(path, f"value for {f.name!r} must be a {want}, got {type_name(v)}")
            return False, None
        if isinstance(v, str) and len(v) > MAX_STRING:
            self.err(path, f"string longer than {MAX_STRING} characters")
            return False, None
        return True, (norm_number(v) if f.type in NUMERIC else v)


@dataclass(frozen=True)
class CheckedClause:
    index: int
    id: str | None
    from_: str | None
    rule: Any        # as written
    normal: Any      # normal form, used for the fingerprint and evaluation


@dataclass(frozen=True)
class Checked:
    clauses: tuple[CheckedClause, ...]
    rank: tuple[tuple[str, str], ...] | None  # None: not given (the model applies the default)
    max_attempts: int
    no_log: bool
    explicit: frozenset[str]


def _clause(w: _Walk, i: int, c: Any) -> CheckedClause | None:
    path = f"rules[{i}]"
    if isinstance(c, Mapping):
        for k in c:
            if k not in CLAUSE_KEYS:
                w.err(f"{path}.{k}", f"unknown clause key {k!r}{suggest(str(k), CLAUSE_KEYS)}")
        cid, src = c.get("id"), c.get("from")
        for key, v in (("id", cid), ("from", src)):
            if v is not None and (not isinstance(v, str) or len(v) > MAX_STRING):
                w.err(f"{path}.{key}", f"{key!r} must be a string of at most {MAX_STRING} characters")
        if "rule" not in c:
            w.err(path, "a labelled clause needs 'rule'")
            return None
        normal = w.expr(c["rule"], f"{path}.rule", 1)
        rule = c["rule"]
    else:
        cid = src = None
        normal = w.expr(c, path, 1)
        rule = c
    if normal is None:
        return None
    return CheckedClause(i, cid if isinstance(cid, str) else None, src if isinstance(src, str) else None, rule, normal)


def _rank(w: _Walk, rank: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(rank, list) or not rank:
        w.err("rank", "rank is a non-empty list of [\"asc\"|\"desc\", field]")
        return ()
    if len(rank) > MAX_RANK_KEYS:
        w.err("rank", f"too many sort keys: {len(rank)} > {MAX_RANK_KEYS}")
        return ()
    out: list[tuple[str, str]] = []
    for i, k in enumerate(rank):
        p = f"rank[{i}]"
        if not (isinstance(k, list) and len(k) == 2):
            w.err(p, "a sort key is [\"asc\"|\"desc\", field]")
            continue
        d, name = k
        if d not in RANK_DIRS:
            w.err(f"{p}[0]", f"sort direction must be 'asc' or 'desc'{suggest(d, RANK_DIRS) if isinstance(d, str) else ''}")
            continue
        if not isinstance(name, str):
            w.err(f"{p}[1]", f"field name must be a string, got {type_name(name)}")
            continue
        f = w.registry.get(name)
        if f is None:
            w.err(f"{p}[1]", f"unknown field {shown(name)}{suggest(name, w.registry.names())}")
            continue
        if f.type == "list[string]":
            w.err(f"{p}[1]", f"cannot sort by list field {name!r}")
            continue
        out.append((d, name))
    return tuple(out)


def check(obj: Any, registry: FieldRegistry) -> tuple[list[PolicyErrorItem], Checked | None]:
    """Validate a decoded policy. Returns (errors, checked); checked is None when errors."""
    w = _Walk(registry)
    if not isinstance(obj, Mapping):
        w.err("$", f"a policy is a JSON object, got {type_name(obj)}")
        return w.errors, None
    for k in obj:
        if k not in TOP_KEYS:
            w.err(str(k), f"unknown key {k!r}{suggest(str(k), TOP_KEYS)}")
    schema = obj.get("schema", SCHEMA)
    if schema != SCHEMA:
        w.err("schema", f"unsupported schema {shown(schema)}; this routecar reads {SCHEMA!r}")
    rules = obj.get("rules", [])
    clauses: list[CheckedClause] = []
    if not isinstance(rules, list):
        w.err("rules", f"rules must be a list of clauses, got {type_name(rules)}")
    elif len(rules) > MAX_CLAUSES:
        w.err("rules", f"too many clauses: {len(rules)} > {MAX_CLAUSES}")
    else:
        for i, c in enumerate(rules):
            cc = _clause(w, i, c)
            if cc is not None:
                clauses.append(cc)
    rank = _rank(w, obj["rank"]) if "rank" in obj else None
    max_attempts = DEFAULT_MAX_ATTEMPTS
    fb = obj.get("fallback", {})
    if not isinstance(fb, Mapping):
        w.err("fallback", f"fallback must be an object like {{\"max_attempts\": 3}}, got {type_name(fb)}")
    else:
        for k in fb:
            if k != "max_attempts":
                w.err(f"fallback.{k}", f"unknown key {k!r}{suggest(str(k), ['max_attempts'])}")
        ma = fb.get("max_attempts", DEFAULT_MAX_ATTEMPTS)
        if isinstance(ma, float) and ma.is_integer():
            ma = int(ma)
        if not isinstance(ma, int) or isinstance(ma, bool) or not 1 <= ma <= MAX_ATTEMPTS:
            w.err("fallback.max_attempts", f"max_attempts must be an integer from 1 to {MAX_ATTEMPTS}")
        else:
            max_attempts = ma
    no_log = obj.get("no_log", False)
    if not isinstance(no_log, bool):
        w.err("no_log", f"no_log must be true or false, got {type_name(no_log)}")
    if w.errors:
        return w.errors, None
    explicit = frozenset(k for k in ("rank", "fallback", "no_log") if k in obj)
    return [], Checked(tuple(clauses), rank, max_attempts, bool(no_log), explicit)


def decode(source: str | bytes | Mapping[str, Any]) -> tuple[Any, list[PolicyErrorItem]]:
    """JSON text or an already-decoded object -> (object, errors)."""
    if isinstance(source, Mapping):
        return source, []
    if isinstance(source, (bytes, bytearray)):
        if len(source) > MAX_BYTES:
            return None, [PolicyErrorItem("$", f"policy larger than {MAX_BYTES} bytes")]
        try:
            source = bytes(source).decode("utf-8")
        except UnicodeDecodeError:
            return None, [PolicyErrorItem("$", "policy is not valid UTF-8")]
    if not isinstance(source, str):
        return None, [PolicyErrorItem("$", f"a policy is a JSON object, got {type_name(source)}")]
    if len(source) > MAX_BYTES:
        return None, [PolicyErrorItem("$", f"policy larger than {MAX_BYTES} bytes")]
    try:
        return json.loads(source), []
    except RecursionError:
        return None, [PolicyErrorItem("$", f"expression nested deeper than {MAX_DEPTH} levels")]
    except ValueError as e:
        return None, [PolicyErrorItem("$", f"not valid JSON: {e}")]


def iter_errors(source: str | bytes | Mapping[str, Any], registry: FieldRegistry) -> Iterator[PolicyErrorItem]:
    obj, errors = decode(source)
    if errors:
        yield from errors
        return
    yield from check(obj, registry)[0]
