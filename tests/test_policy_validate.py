"""policy_ir validation: every error as data with an exact path and message.

Table-driven (one row per operator and failure mode) plus hypothesis checks that
nothing but `InvalidPolicy` ever escapes `parse_policy` and `iter_errors` never raises.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routecar.errors import InvalidPolicy
from routecar.fields import DEFAULT_REGISTRY
from routecar.policy import parse_policy
from routecar.policy.ops import MAX_BYTES, MAX_CLAUSES, MAX_DEPTH, MAX_LIST, MAX_NODES
from routecar.policy.validate import iter_errors

R = DEFAULT_REGISTRY


def errors(policy: Any) -> list[tuple[str, str]]:
    return [(e.path, e.message) for e in iter_errors(policy, R)]


def rule_errors(rule: Any) -> list[tuple[str, str]]:
    return errors({"rules": [rule]})


EXPR_ONE = 'an expression is a non-empty list like ["eq", field, value], got '
OPS = "; operators: eq ne in nin cmp has and or not"

# (expression, [(path, message), ...]) -- the expression is placed at rules[0].
EXPR_CASES: list[tuple[Any, list[tuple[str, str]]]] = [
    # eq / ne
    (["eq"], [("rules[0]", "'eq' takes 2 arguments (field, value), got 0")]),
    (["eq", "region"], [("rules[0]", "'eq' takes 2 arguments (field, value), got 1")]),
    (["ne", "region", "eu", "x"], [("rules[0]", "'ne' takes 2 arguments (field, value), got 3")]),
    (["eq", 3, "eu"], [("rules[0][1]", "field name must be a string, got number")]),
    (["eq", "regoin", "eu"], [("rules[0][1]", "unknown field 'regoin' (did you mean 'region'?)")]),
    (["eq", "bench_inteligence", 1], [("rules[0][1]", "unknown field 'bench_inteligence' (did you mean 'bench_intelligence'?)")]),
    (["eq", "zzzz", 1], [("rules[0][1]", "unknown field 'zzzz'")]),
    (["eq", "region", 3], [("rules[0][2]", "value for 'region' must be a string, got number")]),
    (["ne", "region", None], [("rules[0][2]", "value for 'region' must be a string, got null")]),
    (["eq", "zdr", "yes"], [("rules[0][2]", "value for 'zdr' must be a boolean, got string")]),
    (["eq", "zdr", 1], [("rules[0][2]", "value for 'zdr' must be a boolean, got number")]),
    (["eq", "bench_intelligence", "high"], [("rules[0][2]", "value for 'bench_intelligence' must be a number, got string")]),
    (["eq", "price_in", True], [("rules[0][2]", "value for 'price_in' must be a number, got boolean")]),
    (["eq", "capabilities", "tools"],
     [("rules[0]", "operator 'eq' does not apply to field 'capabilities' of type list[string] (use 'has')")]),
    (["eq", "region", "x" * 257], [("rules[0][2]", "string longer than 256 characters")]),
    # in / nin
    (["in", "provider", "openai"], [("rules[0][2]", "'in' needs a list of values, got string")]),
    (["nin", "provider", {}], [("rules[0][2]", "'nin' needs a list of values, got object")]),
    (["in", "provider", []], [("rules[0][2]", "'in' needs at least one value")]),
    (["in", "provider", ["a", 1, None]], [("rules[0][2][1]", "value for 'provider' must be a string, got number"),
                                          ("rules[0][2][2]", "value for 'provider' must be a string, got null")]),
    (["in", "provider"], [("rules[0]", "'in' takes 2 arguments (field, [values]), got 1")]),
    (["in", "zdr", [True]], [("rules[0]", "operator 'in' does not apply to field 'zdr' of type boolean")]),
    (["nin", "capabilities", ["x"]],
     [("rules[0]", "operator 'nin' does not apply to field 'capabilities' of type list[string] (use 'has')")]),
    (["in", "provider", ["x"] * (MAX_LIST + 1)], [("rules[0][2]", f"list longer than {MAX_LIST} values")]),
    # cmp
    (["cmp", "region", "ge", 1], [("rules[0]", "operator 'cmp' does not apply to field 'region' of type string")]),
    (["cmp", "zdr", "ge", 1], [("rules[0]", "operator 'cmp' does not apply to field 'zdr' of type boolean")]),
    (["cmp", "price_in", "gte", 1],
     [("rules[0][2]", "unknown comparison 'gte' (did you mean 'ge'?); use one of ge, gt, le, lt")]),
    (["cmp", "price_in", "<=", 1],
     [("rules[0][2]", "unknown comparison '<=' (did you mean 'le'?); use one of ge, gt, le, lt")]),
    (["cmp", "price_in", "gtt", 1],
     [("rules[0][2]", "unknown comparison 'gtt' (did you mean 'gt'?); use one of ge, gt, le, lt")]),
    (["cmp", "price_in", 1, 1], [("rules[0][2]", "comparison must be a string, one of ge, gt, le, lt, got number")]),
    (["cmp", "price_in", "ge", "1"], [("rules[0][3]", "value for 'price_in' must be a number, got string")]),
    (["cmp", "price_in", "ge", None], [("rules[0][3]", "value for 'price_in' must be a number, got null")]),
    (["cmp", "price_in", "ge"], [("rules[0]", "'cmp' takes 3 arguments (field, op, number), got 2")]),
    (["cmp", "price_in", "bad", "x"],  # both problems of one leaf at once
     [("rules[0][2]", "unknown comparison 'bad'; use one of ge, gt, le, lt"),
      ("rules[0][3]", "value for 'price_in' must be a number, got string")]),
    # has
    (["has", "capabilities", 1], [("rules[0][2]", "value for 'capabilities' must be a string, got number")]),
    (["has", "capabilities", ["tools"]], [("rules[0][2]", "value for 'capabilities' must be a string, got list")]),
    (["has", "region", "eu"], [("rules[0]", "operator 'has' does not apply to field 'region' of type string")]),
    (["has", "capabilities"], [("rules[0]", "'has' takes 2 arguments (field, value), got 1")]),
    # and / or / not
    (["and"], [("rules[0]", "'and' needs at least one expression")]),
    (["or"], [("rules[0]", "'or' needs at least one expression")]),
    (["not"], [("rules[0]", "'not' takes 1 expression, got 0")]),
    (["not", ["eq", "region", "eu"], ["eq", "region", "us"]], [("rules[0]", "'not' takes 1 expression, got 2")]),
    (["and", ["eq", "regoin", "eu"], ["cmp", "price_in", "ge", "x"]],
     [("rules[0][1][1]", "unknown field 'regoin' (did you mean 'region'?)"),
      ("rules[0][2][3]", "value for 'price_in' must be a number, got string")]),
    (["or", ["eq", "region", "eu"], "eq"], [("rules[0][2]", EXPR_ONE + "string")]),
    (["not", ["eqq", "region", "eu"]], [("rules[0][1][0]", "unknown operator 'eqq' (did you mean 'eq'?)" + OPS)]),
    (["or", ["nn", "region", ["eu"]]], [("rules[0][1][0]", "unknown operator 'nn' (did you mean 'nin'?)" + OPS)]),
    (["and"] + [["eq", "region", "eu"]] * (MAX_LIST + 1), [("rules[0]", f"'and' with more than {MAX_LIST} expressions")]),
    # shape of an expression
    (["equals", "region", "eu"], [("rules[0][0]", "unknown operator 'equals' (did you mean 'eq'?)" + OPS)]),
    (["$in", "region", ["eu"]], [("rules[0][0]", "unknown operator '$in' (did you mean 'in'?)" + OPS)]),
    (["!=", "region", "eu"], [("rules[0][0]", "unknown operator '!=' (did you mean 'ne'?)" + OPS)]),
    (["frob", "region", "eu"], [("rules[0][0]", "unknown operator 'frob'" + OPS)]),
    (["gte", "price_in", 1],
     [("rules[0][0]", "unknown operator 'gte': comparisons are written [\"cmp\", field, \"ge\", number]")]),
    (["lt", "price_in", 1],
     [("rules[0][0]", "unknown operator 'lt': comparisons are written [\"cmp\", field, \"lt\", number]")]),
    (["cmpp", "price_in", "ge", 1], [("rules[0][0]", "unknown operator 'cmpp' (did you mean 'cmp'?)" + OPS)]),
    ([], [("rules[0]", EXPR_ONE + "an empty list")]),
    ("eq", [("rules[0]", EXPR_ONE + "string")]),
    (5, [("rules[0]", EXPR_ONE + "number")]),
    (None, [("rules[0]", EXPR_ONE + "null")]),
    ([5, "region"], [("rules[0][0]", "operator must be a string, got number")]),
    ([["eq", "region", "eu"]], [("rules[0][0]", "operator must be a string, got list")]),
]


@pytest.mark.parametrize(("rule", "expected"), EXPR_CASES, ids=[json.dumps(c[0])[:50] for c in EXPR_CASES])
def test_expression_errors(rule: Any, expected: list[tuple[str, str]]) -> None:
    assert rule_errors(rule) == expected


@pytest.mark.parametrize("rule", [
    ["eq", "region", "eu"], ["ne", "zdr", True], ["in", "provider", ["openai", "mistral"]],
    ["nin", "context_window", [128000, 200000.0]], ["cmp", "price_in", "le", 1], ["cmp", "est_cost", "lt", 0.01],
    ["cmp", "latency_ms", "gt", 0], ["eq", "healthy", True], ["has", "capabilities", "tools"],
    ["and", ["eq", "region", "eu"]], ["or", ["eq", "region", "eu"], ["eq", "zdr", True]], ["not", ["not", ["eq", "zdr", True]]],
])
def test_valid_expressions(rule: Any) -> None:
    assert rule_errors(rule) == []
    assert parse_policy({"rules": [rule]}).clauses[0].rule == rule


POLICY_CASES: list[tuple[Any, list[tuple[str, str]]]] = [
    # labelled clauses
    ({"rules": [{"id": "a", "rule": ["eq", "region", "eu"], "frm": "x"}]},
     [("rules[0].frm", "unknown clause key 'frm' (did you mean 'from'?)")]),
    ({"rules": [{"id": "a"}]}, [("rules[0]", "a labelled clause needs 'rule'")]),
    ({"rules": [{}]}, [("rules[0]", "a labelled clause needs 'rule'")]),
    ({"rules": [{"id": 3, "rule": ["eq", "region", "eu"], "from": ["x"]}]},
     [("rules[0].id", "'id' must be a string of at most 256 characters"),
      ("rules[0].from", "'from' must be a string of at most 256 characters")]),
    ({"rules": [{"id": "x" * 257, "rule": ["eq", "region", "eu"]}]},
     [("rules[0].id", "'id' must be a string of at most 256 characters")]),
    ({"rules": [{"id": "a", "rule": ["eq", "regon", "eu"]}]},
     [("rules[0].rule[1]", "unknown field 'regon' (did you mean 'region'?)")]),
    ({"rules": [{"id": "a", "rule": ["and", ["cmp", "price_in", "ge", "1"]]}]},
     [("rules[0].rule[1][3]", "value for 'price_in' must be a number, got string")]),
    # rank
    ({"rank": []}, [("rank", 'rank is a non-empty list of ["asc"|"desc", field]')]),
    ({"rank": [["asc", "price_in"]] * 17}, [("rank", "too many sort keys: 17 > 16")]),
    ({"rank": "est_cost"}, [("rank", 'rank is a non-empty list of ["asc"|"desc", field]')]),
    ({"rank": [["asc"]]}, [("rank[0]", 'a sort key is ["asc"|"desc", field]')]),
    ({"rank": ["asc", "id"]}, [("rank[0]", 'a sort key is ["asc"|"desc", field]'),
                              ("rank[1]", 'a sort key is ["asc"|"desc", field]')]),
    ({"rank": [["up", "price_in"]]}, [("rank[0][0]", "sort direction must be 'asc' or 'desc'")]),
    ({"rank": [["dsc", "price_in"]]}, [("rank[0][0]", "sort direction must be 'asc' or 'desc' (did you mean 'desc'?)")]),
    ({"rank": [["asc", "prce_in"]]}, [("rank[0][1]", "unknown field 'prce_in' (did you mean 'price_in'?)")]),
    ({"rank": [["asc", 7]]}, [("rank[0][1]", "field name must be a string, got number")]),
    ({"rank": [["asc", "capabilities"]]}, [("rank[0][1]", "cannot sort by list field 'capabilities'")]),
    # fallback
    ({"fallback": 3}, [("fallback", 'fallback must be an object like {"max_attempts": 3}, got number')]),
    ({"fallback": {"max_attempts": 0}}, [("fallback.max_attempts", "max_attempts must be an integer from 1 to 10")]),
    ({"fallback": {"max_attempts": 11}}, [("fallback.max_attempts", "max_attempts must be an integer from 1 to 10")]),
    ({"fallback": {"max_attempts": True}}, [("fallback.max_attempts", "max_attempts must be an integer from 1 to 10")]),
    ({"fallback": {"max_attempts": 2.5}}, [("fallback.max_attempts", "max_attempts must be an integer from 1 to 10")]),
    ({"fallback": {"max_attempts": "3"}}, [("fallback.max_attempts", "max_attempts must be an integer from 1 to 10")]),
    ({"fallback": {"max_atempts": 2}}, [("fallback.max_atempts", "unknown key 'max_atempts' (did you mean 'max_attempts'?)")]),
    # no_log, schema, top level
    ({"no_log": "yes"}, [("no_log", "no_log must be true or false, got string")]),
    ({"no_log": 1}, [("no_log", "no_log must be true or false, got number")]),
    ({"schema": "sigma-pol/v2"}, [("schema", "unsupported schema 'sigma-pol/v2'; this routecar reads 'sigma-pol/v1'")]),
    ({"schema": ["sigma-pol/v1"]}, [("schema", "unsupported schema list; this routecar reads 'sigma-pol/v1'")]),
    ({"rulez": []}, [("rulez", "unknown key 'rulez' (did you mean 'rules'?)")]),
    ({"nolog": True}, [("nolog", "unknown key 'nolog' (did you mean 'no_log'?)")]),
    ({"rules": {}}, [("rules", "rules must be a list of clauses, got object")]),
    ([], [("$", "a policy is a JSON object, got list")]),
    ("[]", [("$", "a policy is a JSON object, got list")]),
    ("null", [("$", "a policy is a JSON object, got null")]),
    (42, [("$", "a policy is a JSON object, got number")]),
    (b"\xff", [("$", "policy is not valid UTF-8")]),
    ('{"rules": [', [("$", "not valid JSON: Expecting value: line 1 column 12 (char 11)")]),
]


@pytest.mark.parametrize(("policy", "expected"), POLICY_CASES, ids=[repr(c[0])[:50] for c in POLICY_CASES])
def test_policy_errors(policy: Any, expected: list[tuple[str, str]]) -> None:
    assert errors(policy) == expected


def test_empty_policy_is_valid_and_text_bytes_object_agree() -> None:
    assert errors({}) == errors("{}") == errors(b"{}") == []
    text = '{"rules": [["eq", "region", "eu"]], "no_log": true}'
    assert parse_policy(text) == parse_policy(text.encode()) == parse_policy(json.loads(text))


def test_nan_and_infinity_are_rejected() -> None:
    for lit in ("NaN", "Infinity", "-Infinity", "1e999"):
        assert errors('{"rules": [["cmp", "price_in", "ge", %s]]}' % lit) == [
            ("rules[0][3]", "value for 'price_in' must be a finite number")]
    assert errors({"rules": [["in", "price_in", [1, float("nan")]]]}) == [
        ("rules[0][2][1]", "value for 'price_in' must be a finite number")]


def test_many_errors_are_reported_at_once() -> None:
    policy = {
        "schema": "v0",
        "rules": [["eq", "regoin", "eu"], {"id": "x"}, ["cmp", "price_in", "gt", "1"], ["eq", "region", "eu"]],
        "rank": [["up", "id"]],
        "fallback": {"max_attempts": 99},
        "no_log": "no",
        "extra": 1,
    }
    got = errors(policy)
    assert [p for p, _ in got] == ["extra", "schema", "rules[0][1]", "rules[1]", "rules[2][3]", "rank[0][0]",
                                   "fallback.max_attempts", "no_log"]
    with pytest.raises(InvalidPolicy) as ei:
        parse_policy(policy)
    assert ei.value.errors == [{"path": p, "message": m} for p, m in got]
    assert ei.value.to_openai()["error"]["code"] == "invalid_policy"
    assert ei.value.to_openai()["error"]["errors"] == ei.value.errors
    assert str(ei.value).startswith("invalid policy (8 error(s)): extra: unknown key 'extra'")


# -- limits ------------------------------------------------------------------------

def nested_not(depth: int) -> list[Any]:
    e: list[Any] = ["eq", "region", "eu"]
    for _ in range(depth - 1):
        e = ["not", e]
    return e


def test_depth_limit() -> None:
    assert rule_errors(nested_not(MAX_DEPTH)) == []
    path = "rules[0]" + "[1]" * MAX_DEPTH
    assert rule_errors(nested_not(MAX_DEPTH + 1)) == [(path, f"expression nested deeper than {MAX_DEPTH} levels")]
    # far deeper than Python's recursion limit: still one clear error
    assert rule_errors(nested_not(50_000)) == [(path, f"expression nested deeper than {MAX_DEPTH} levels")]


def test_deeply_nested_json_text_is_a_clear_error() -> None:
    assert errors("[" * 50_000) == [("$", f"expression nested deeper than {MAX_DEPTH} levels")]
    assert errors('{"rules": [' + "[" * 20_000) == [("$", f"expression nested deeper than {MAX_DEPTH} levels")]
    assert errors("[" * 100_000) == [("$", f"policy larger than {MAX_BYTES} bytes")]
    with pytest.raises(InvalidPolicy):
        parse_policy("[" * 100_000)
    # deep but under the JSON decoder's limit, in places that are not expressions
    deep = "[" * 900 + "]" * 900
    for text in ('{"schema": %s}', '{"rank": [["asc", %s]]}', '{"rules": [["cmp", "price_in", %s, 1]]}',
                 '{"rules": [%s]}', '{"rules": [{"id": %s, "rule": ["eq", "region", "eu"]}]}'):
        got = errors(text % deep)
        assert len(got) == 1 and "[[" not in got[0][1]


def test_clause_count_limit() -> None:
    ok = {"rules": [["cmp", "price_in", "le", i] for i in range(MAX_CLAUSES)]}
    assert errors(ok) == []
    too_many = {"rules": [["cmp", "price_in", "le", i] for i in range(MAX_CLAUSES + 1)]}
    assert errors(too_many) == [("rules", f"too many clauses: {MAX_CLAUSES + 1} > {MAX_CLAUSES}")]


def test_node_budget() -> None:
    wide = ["or"] + [["and"] + [["cmp", "price_in", "le", i]] * 200 for i in range(6)]
    got = errors({"rules": [wide]})
    assert len(got) == 1 and got[0][1] == f"policy too large: more than {MAX_NODES} expression nodes"


def test_total_bytes_limit() -> None:
    text = json.dumps({"rules": [["eq", "region", "eu"]], "pad": "x" * MAX_BYTES})
    assert errors(text) == [("$", f"policy larger than {MAX_BYTES} bytes")]
    assert errors(text.encode()) == [("$", f"policy larger than {MAX_BYTES} bytes")]


# -- properties --------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.sampled_from(["eq", "ne", "in", "nin", "cmp", "has", "and", "or", "not", "ge", "lt",
                       "region", "provider", "price_in", "capabilities", "zdr", "id", "asc", "desc"]),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(
        st.sampled_from(["schema", "rules", "rank", "fallback", "no_log", "id", "rule", "from", "max_attempts", "x"])
        | st.text(max_size=5), kids, max_size=5),
    max_leaves=40,
)

policy_like = st.fixed_dictionaries({}, optional={
    "schema": st.just("sigma-pol/v1") | json_values, "rules": st.lists(json_values, max_size=4) | json_values,
    "rank": json_values, "fallback": json_values, "no_log": st.booleans() | json_values,
})


def parses_or_invalid(source: Any) -> None:
    try:
        p = parse_policy(source)
    except InvalidPolicy as e:
        assert e.errors and all(set(x) == {"path", "message"} for x in e.errors)
        assert [x.to_dict() for x in iter_errors(source, R)] == e.errors
        return
    assert list(iter_errors(source, R)) == []
    assert parse_policy(p.to_ir()) == p


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | policy_like)
def test_arbitrary_json_objects_only_raise_invalid_policy(value: Any) -> None:
    parses_or_invalid(value) if isinstance(value, dict) else parses_or_invalid(json.dumps(value))


@settings(max_examples=300, deadline=None)
@given(json_values | policy_like)
def test_arbitrary_json_text_only_raises_invalid_policy(value: Any) -> None:
    parses_or_invalid(json.dumps(value))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_arbitrary_text_only_raises_invalid_policy(text: str | bytes) -> None:
    parses_or_invalid(text)
