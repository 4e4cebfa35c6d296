"""The policy language in one place: the schema tag, the defaults, the limits and
THE table of operators.

Every operator is one `Op`: the field types it applies to, how it is validated
(and put in normal form), how it compiles to a predicate over a catalog row,
which argument positions hold values (tenant rules substitute `$attribute`
there) and the line that documents it. `validate`, `model`, the field listing
(`GET /x/fields`) and the tenant rules all read this table; docs/policy-ir.md's
operator table is checked against it by the tests.

    OPS["eq"].check(walk, ["eq", "region", "eu"], "rules[0]", 1)  -> ["eq", "region", "eu"] (or None + errors)
    compile_expr(["eq", "region", "eu"])({"region": "eu"})        -> True
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..fields import FieldRegistry, FieldType
from .spelling import suggest_op

SCHEMA = "sigma-pol/v1"
DEFAULT_RANK: tuple[tuple[str, str], ...] = (("asc", "est_cost"), ("desc", "bench_intelligence"), ("asc", "id"))
TIE_BREAK = ("asc", "id")  # always the last sort key: ranking is total
DEFAULT_MAX_ATTEMPTS = 3

MAX_BYTES = 64 * 1024
MAX_CLAUSES = 64
MAX_DEPTH = 12
MAX_NODES = 1024
MAX_LIST = 256
MAX_STRING = 256
MAX_ATTEMPTS = 10
MAX_RANK_KEYS = 16

Row = Mapping[str, Any]
Predicate = Callable[[Row], bool]

CMP_OPS: dict[str, Callable[[Any, Any], bool]] = {"ge": operator.ge, "gt": operator.gt, "le": operator.le,
                                                  "lt": operator.lt}


# -- helpers for error messages and normal forms ---------------------------------------

def type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def shown(v: Any) -> str:
    """A user-given value for an error message: short strings quoted, anything else by type."""
    if isinstance(v, str):
        return repr(v if len(v) <= 64 else v[:64] + "...")
    return type_name(v)


def canon_key(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- the operator table ------------------------------------------------------------------

class FieldLike(Protocol):
    name: str
    type: FieldType


class Walk(Protocol):
    """What a checker may ask of the validation pass (`validate._Walk`)."""

    def err(self, path: str, message: str) -> None: ...

    def expr(self, e: Any, path: str, depth: int) -> Any: ...

    def field(self, e: list[Any], path: str, op: str) -> FieldLike | None: ...

    def value(self, f: FieldLike, v: Any, path: str) -> tuple[bool, Any]: ...


Checker = Callable[[Walk, list[Any], str, int], Any]
Compiler = Callable[[list[Any]], Predicate]


@dataclass(frozen=True)
class Op:
    name: str
    form: str                           # how it is written, as docs/policy-ir.md shows it
    field_types: tuple[FieldType, ...]  # () for the logical operators
    check: Checker                      # validate one use; its normal form, or None after w.err(...)
    compile: Compiler                   # normal form -> predicate over an entry row
    example: str = ""
    arity: int | None = None            # list length with the operator; None: one or more expressions
    usage: str = ""                     # the arguments, as error messages name them
    slots: Mapping[int, str] = field(default_factory=dict)  # value positions: "scalar" | "list" | "number"

    @property
    def logical(self) -> bool:
        return not self.field_types


def _check_eq(w: Walk, e: list[Any], path: str, depth: int) -> Any:
    f = w.field(e, path, e[0])
    if f is None:
        return None
    ok, v = w.value(f, e[2], f"{path}[2]")
    return [e[0], f.name, v] if ok else None


def _check_in(w: Walk, e: list[Any], path: str, depth: int) -> Any:
    f = w.field(e, path, e[0])
    if f is None:
        return None
    vals = e[2]
    if not isinstance(vals, list):
        w.err(f"{path}[2]", f"{e[0]!r} needs a list of values, got {type_name(vals)}")
        return None
    if not vals:
        w.err(f"{path}[2]", f"{e[0]!r} needs at least one value")
        return None
    if len(vals) > MAX_LIST:
        w.err(f"{path}[2]", f"list longer than {MAX_LIST} values")
        return None
    out, ok = [], True
    for i, v in enumerate(vals):
        good, nv = w.value(f, v, f"{path}[2][{i}]")
        ok &= good
        out.append(nv)
    if not ok:
        return None
    uniq = {canon_key(v): v for v in out}
    return [e[0], f.name, [uniq[k] for k in sorted(uniq)]]


def _check_cmp(w: Walk, e: list[Any], path: str, depth: int) -> Any:
    f = w.field(e, path, "cmp")
    if f is None:
        return None
    op, ok = e[2], True
    if not isinstance(op, str):
        w.err(f"{path}[2]", f"comparison must be a string, one of ge, gt, le, lt, got {type_name(op)}")
        ok = False
    elif op not in CMP_OPS:
        w.err(f"{path}[2]", f"unknown comparison {shown(op)}{suggest_op(op, CMP_OPS)}; use one of ge, gt, le, lt")
        ok = False
    good, v = w.value(f, e[3], f"{path}[3]")
    return ["cmp", f.name, op, v] if ok and good else None


def _check_andor(w: Walk, e: list[Any], path: str, depth: int) -> Any:
    op = e[0]
    if len(e) < 2:
        w.err(path, f"{op!r} needs at least one expression")
        return None
    if len(e) - 1 > MAX_LIST:
        w.err(path, f"{op!r} with more than {MAX_LIST} expressions")
        return None
    args = [w.expr(a, f"{path}[{i}]", depth + 1) for i, a in enumerate(e[1:], start=1)]
    if any(a is None for a in args):
        return None
    flat: dict[str, Any] = {}
    for a in args:  # flatten nested same-op, sort and de-duplicate: and/or are commutative
        for x in (a[1:] if a[0] == op else [a]):
            flat[canon_key(x)] = x
    if len(flat) == 1:
        return next(iter(flat.values()))
    return [op, *(flat[k] for k in sorted(flat))]


def _check_not(w: Walk, e: list[Any], path: str, depth: int) -> Any:
    if len(e) != 2:
        w.err(path, f"'not' takes 1 expression, got {len(e) - 1}")
        return None
    inner = w.expr(e[1], f"{path}[1]", depth + 1)
    if inner is None:
        return None
    return inner[1] if inner[0] == "not" else ["not", inner]


def _compile_eq(e: list[Any]) -> Predicate:
    f, v = e[1], e[2]
    return lambda r: r.get(f) == v


def _compile_ne(e: list[Any]) -> Predicate:
    f, v = e[1], e[2]
    return lambda r: r.get(f) != v  # a missing value is "not equal"


def _compile_in(e: list[Any]) -> Predicate:
    f, s = e[1], frozenset(e[2])
    return lambda r: r.get(f) in s


def _compile_nin(e: list[Any]) -> Predicate:
    f, s = e[1], frozenset(e[2])
    return lambda r: r.get(f) not in s


def _compile_has(e: list[Any]) -> Predicate:
    f, v = e[1], e[2]
    return lambda r: v in (r.get(f) or ())


def _compile_cmp(e: list[Any]) -> Predicate:
    f, test, n = e[1], CMP_OPS[e[2]], e[3]

    def compare(r: Row) -> bool:
        x = r.get(f)
        return x is not None and test(x, n)
    return compare


def _compile_and(e: list[Any]) -> Predicate:
    parts = tuple(compile_expr(a) for a in e[1:])
    return lambda r: all(p(r) for p in parts)


def _compile_or(e: list[Any]) -> Predicate:
    parts = tuple(compile_expr(a) for a in e[1:])
    return lambda r: any(p(r) for p in parts)


def _compile_not(e: list[Any]) -> Predicate:
    inner = compile_expr(e[1])
    return lambda r: not inner(r)


_SCALARS: tuple[FieldType, ...] = ("string", "number", "integer", "boolean")
_LISTABLE: tuple[FieldType, ...] = ("string", "number", "integer")
_NUMBERS: tuple[FieldType, ...] = ("number", "integer")

OPS: dict[str, Op] = {op.name: op for op in (
    Op("eq", '`["eq", f, v]`', _SCALARS, _check_eq, _compile_eq, '`["eq", "region", "eu"]`',
       3, "field, value", {2: "scalar"}),
    Op("ne", '`["ne", f, v]`', _SCALARS, _check_eq, _compile_ne, '`["ne", "zdr", false]`',
       3, "field, value", {2: "scalar"}),
    Op("in", '`["in", f, [v, ...]]`', _LISTABLE, _check_in, _compile_in, '`["in", "provider", ["openai", "azure"]]`',
       3, "field, [values]", {2: "list"}),
    Op("nin", '`["nin", f, [v, ...]]`', _LISTABLE, _check_in, _compile_nin, '`["nin", "provider", ["deepseek"]]`',
       3, "field, [values]", {2: "list"}),
    Op("cmp", '`["cmp", f, op, n]`, op in `ge gt le lt`', _NUMBERS, _check_cmp, _compile_cmp,
       '`["cmp", "price_in", "le", 1.0]`', 4, "field, op, number", {3: "number"}),
    Op("has", '`["has", f, v]`', ("list[string]",), _check_eq, _compile_has, '`["has", "capabilities", "vision"]`',
       3, "field, value", {2: "scalar"}),
    Op("and", '`["and", e, ...]`', (), _check_andor, _compile_and,
       '`["and", ["eq","region","eu"], ["eq","zdr",true]]`'),
    Op("or", '`["or", e, ...]`', (), _check_andor, _compile_or,
       '`["or", ["eq","region","eu"], ["has","capabilities","vision"]]`'),
    Op("not", '`["not", e]`', (), _check_not, _compile_not, '`["not", ["eq", "provider", "groq"]]`', 2),
)}


def operators_for(field_type: FieldType) -> tuple[str, ...]:
    """The operators a field of this type can be tested with."""
    return tuple(op.name for op in OPS.values() if field_type in op.field_types)


def compile_expr(e: list[Any]) -> Predicate:
    """A validated normal-form expression -> a predicate over an entry row."""
    return OPS[e[0]].compile(e)


def expr_fields(e: list[Any]) -> tuple[str, ...]:
    """The fields an expression reads, in order of appearance."""
    if OPS[e[0]].logical:
        seen: dict[str, None] = {}
        for a in e[1:]:
            for f in expr_fields(a):
                seen[f] = None
        return tuple(seen)
    return (e[1],)


def describe_fields(registry: FieldRegistry) -> list[dict[str, Any]]:
    """The fields rules can use, with the operators each takes (`GET /x/fields`, `routecar fields`)."""
    return [{"name": f.name, "type": f.type, "description": f.description, "operators": list(operators_for(f.type)),
             "example": f.example, "source": f.source} for f in map(registry.fields.__getitem__, registry.names())]
