"""The operator table (policy/ops.py) is the one definition of the policy language's operators:
validation, compilation, the field listing, the tenant rules and the docs all agree with it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from routecar.errors import InvalidPolicy
from routecar.fields import DEFAULT_REGISTRY
from routecar.policy import parse_policy
from routecar.policy.ops import (DEFAULT_MAX_ATTEMPTS, DEFAULT_RANK, OPS, SCHEMA, compile_expr, describe_fields,
                                 operators_for)
from routecar.tenants.rules import parse_rules

ROOT = Path(__file__).resolve().parents[1]
# One field of each type, and a value of that type.
FIELD_OF_TYPE = {"string": ("region", "eu"), "number": ("bench_intelligence", 0.5),
                 "integer": ("context_window", 1000), "boolean": ("zdr", True),
                 "list[string]": ("capabilities", "tools")}


def use(op: str, field: str, value: object) -> list[object]:
    if op in ("in", "nin"):
        return [op, field, [value]]
    if op == "cmp":
        return [op, field, "ge", value]
    return [op, field, value]


@pytest.mark.parametrize("op", [o.name for o in OPS.values() if not o.logical])
@pytest.mark.parametrize("field_type", sorted(FIELD_OF_TYPE))
def test_validation_accepts_exactly_the_listed_field_types(op, field_type):
    field, value = FIELD_OF_TYPE[field_type]
    allowed = field_type in OPS[op].field_types
    try:
        parse_policy({"rules": [use(op, field, value)]})
    except InvalidPolicy as e:
        assert not allowed, e.errors
        assert [err["message"].split(" of type")[0] for err in e.errors] == [
            f"operator {op!r} does not apply to field {field!r}"]
    else:
        assert allowed


def test_the_field_listing_reads_the_table():
    listed = {f["name"]: f for f in describe_fields(DEFAULT_REGISTRY)}
    for field_type, (field, _) in FIELD_OF_TYPE.items():
        assert listed[field]["operators"] == list(operators_for(field_type))
        assert listed[field]["operators"] == [o.name for o in OPS.values() if field_type in o.field_types]
    assert list(listed) == DEFAULT_REGISTRY.names()
    assert operators_for("list[string]") == ("has",) and "cmp" not in operators_for("string")


@pytest.mark.parametrize("expr,missing_is", [
    (["eq", "tier", "mid"], False), (["ne", "tier", "mid"], True), (["in", "tier", ["mid"]], False),
    (["nin", "tier", ["mid"]], True), (["cmp", "latency_ms", "le", 500], False), (["has", "capabilities", "x"], False),
])
def test_compiled_leaves_on_a_missing_value_as_documented(expr, missing_is):
    assert compile_expr(expr)({}) is missing_is


@pytest.mark.parametrize("expr,row,expected", [
    (["cmp", "price_in", "ge", 1], {"price_in": 1}, True),
    (["cmp", "price_in", "gt", 1], {"price_in": 1}, False),
    (["cmp", "price_in", "le", 1], {"price_in": 0.5}, True),
    (["cmp", "price_in", "lt", 1], {"price_in": 1}, False),
    (["and", ["eq", "region", "eu"], ["has", "capabilities", "tools"]], {"region": "eu", "capabilities": ["tools"]}, True),
    (["or", ["eq", "region", "us"], ["not", ["eq", "zdr", True]]], {"region": "eu", "zdr": True}, False),
])
def test_compiled_expressions(expr, row, expected):
    assert compile_expr(expr)(row) is expected


def test_docs_operator_table_is_the_table():
    text = (ROOT / "docs" / "policy-ir.md").read_text(encoding="utf-8")
    section = text.split("## Expressions", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| `")]
    assert [r[0] for r in rows] == [f"`{name}`" for name in OPS]
    for (_, form, types, example), op in zip(rows, OPS.values()):
        assert form == op.form
        assert types == (", ".join(op.field_types) or "—")
        assert example == op.example


def test_tenant_rules_read_the_table():
    # every operator is accepted in a rule's clauses; a value slot takes a $reference
    for name, op in OPS.items():
        if op.logical:
            clause = [name, ["eq", "region", "eu"]] if op.arity == 2 else [name, ["eq", "region", "eu"], ["eq", "zdr", True]]
        else:
            clause = use(name, "region", "$region")
            if op.slots.get(2) == "list":
                clause = [name, "region", "$regions"]
        parse_rules([{"id": "r", "when": "always", "add": {"rules": [clause]}}])


def test_the_language_constants_are_spelt_once():
    # the schema tag, and no second default rank or max_attempts default in the package
    for path in (ROOT / "addon").rglob("*.py"):
        if path.name == "ops.py":
            continue
        literals = [n.value for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                    if isinstance(n, ast.Constant)]
        assert SCHEMA not in literals, path
        assert "bench_intelligence" not in literals or path.name == "fields.py", path  # a default rank
    p = parse_policy({})
    assert p.rank == DEFAULT_RANK and p.max_attempts == DEFAULT_MAX_ATTEMPTS
    assert p.canonical["schema"] == SCHEMA
