"""Compile rules: the `when` language, $substitution, load validation, shipped data."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routecar.catalog import load_catalog
from routecar.errors import ConfigError
from routecar.policy import RequestProfile, combine, evaluate, parse_policy
from routecar.tenants.rules import (
    RuleCompileError,
    RuleSet,
    TenantPolicyError,
    check_tenants,
    compile_ir,
    compile_policy,
    load_rules,
    parse_rules,
)
from routecar.tenants.table import Tenant, load_tenants

POLICIES = Path(__file__).resolve().parents[1] / "policies"


def tenant(tid: str = "t1", **attrs: Any) -> Tenant:
    frozen = {k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()}
    return Tenant(tid, MappingProxyType(frozen))


def rules(*items: dict[str, Any]) -> RuleSet:
    return parse_rules({"rules": list(items)})


def add_floor(when: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"id": "r", "add": {"rules": [["cmp", "bench_intelligence", "ge", 0.5]]}}
    if when is not None:
        rule["when"] = when
    return rule


# (when, attributes, matches)
WHEN_CASES = [
    (None, {}, True),
    ("always", {}, True),
    ({}, {}, True),
    ({"plan": "free"}, {"plan": "free"}, True),
    ({"plan": "free"}, {"plan": "pro"}, False),
    ({"plan": "free"}, {}, False),
    ({"plan": ["free", "trial"]}, {"plan": "trial"}, True),
    ({"plan": ["free", "trial"]}, {"plan": "pro"}, False),
    ({"dpa": True}, {"dpa": True}, True),
    ({"dpa": True}, {"dpa": 1}, False),  # booleans never equal numbers
    ({"dpa": True}, {"dpa": False}, False),
    ({"blocked": {"present": True}}, {"blocked": ["groq"]}, True),
    ({"blocked": {"present": True}}, {}, False),
    ({"blocked": {"present": False}}, {}, True),
    ({"plan": {"ne": "free"}}, {}, True),
    ({"plan": {"ne": "free"}}, {"plan": "free"}, False),
    ({"plan": {"not_in": ["free", "trial"]}}, {"plan": "pro"}, True),
    ({"seats": {"ge": 10}}, {"seats": 10}, True),
    ({"seats": {"gt": 10}}, {"seats": 10}, False),
    ({"seats": {"ge": 10, "lt": 100}}, {"seats": 100}, False),
    ({"seats": {"lt": 10}}, {}, False),
    ({"tags": {"contains": "beta"}}, {"tags": ["beta", "eu"]}, True),
    ({"tags": {"contains": "beta"}}, {"tags": ["eu"]}, False),
    ({"plan": "enterprise", "region": "eu"}, {"plan": "enterprise", "region": "us"}, False),
    ({"plan": "enterprise", "region": "eu"}, {"plan": "enterprise", "region": "eu"}, True),
]


@pytest.mark.parametrize(("when", "attrs", "matches"), WHEN_CASES)
def test_when(when: Any, attrs: dict[str, Any], matches: bool) -> None:
    ir = compile_ir(tenant(**attrs), rules(add_floor(when)))
    assert bool(ir["rules"]) is matches


# (rule, attributes, expected clauses)
COMPILE_CASES = [
    ({"id": "floor", "add": {"rules": [["cmp", "bench_intelligence", "ge", "$q"]]}}, {"q": 0.55},
     [{"id": "floor", "rule": ["cmp", "bench_intelligence", "ge", 0.55], "from": "rule:floor"}]),
    ({"id": "ok", "add": {"rules": [["in", "provider", "$approved"]]}}, {"approved": ["openai", "azure"]},
     [{"id": "ok", "rule": ["in", "provider", ["openai", "azure"]], "from": "rule:ok"}]),
    ({"id": "ok", "add": {"rules": [["in", "provider", ["openai", "$extra"]]]}}, {"extra": "groq"},
     [{"id": "ok", "rule": ["in", "provider", ["openai", "groq"]], "from": "rule:ok"}]),
    ({"id": "two", "add": {"rules": [["eq", "region", "$region"], ["not", ["eq", "provider", "$bad"]]]}},
     {"region": "eu", "bad": "groq"},
     [{"id": "two#1", "rule": ["eq", "region", "eu"], "from": "rule:two"},
      {"id": "two#2", "rule": ["not", ["eq", "provider", "groq"]], "from": "rule:two"}]),
    ({"id": "lit", "add": {"rules": [["eq", "model", "$$dollar"]]}}, {},
     [{"id": "lit", "rule": ["eq", "model", "$dollar"], "from": "rule:lit"}]),
    ({"id": "any", "add": {"rules": [["or", ["has", "capabilities", "$cap"], ["eq", "zdr", "$zdr"]]]}},
     {"cap": "vision", "zdr": True},
     [{"id": "any", "rule": ["or", ["has", "capabilities", "vision"], ["eq", "zdr", True]], "from": "rule:any"}]),
]


@pytest.mark.parametrize(("rule", "attrs", "expected"), COMPILE_CASES)
def test_compile_substitution(rule: dict[str, Any], attrs: dict[str, Any], expected: list[Any]) -> None:
    assert compile_ir(tenant(**attrs), rules(rule))["rules"] == expected


def test_compile_merges_no_log_rank_fallback_in_file_order() -> None:
    rs = rules(
        {"id": "a", "add": {"no_log": True, "rank": [["asc", "est_cost"]], "fallback": {"max_attempts": 2}}},
        {"id": "b", "add": {"no_log": False, "rank": [["desc", "bench_intelligence"]]}},
        {"id": "c", "when": {"plan": "never"}, "add": {"fallback": {"max_attempts": 9}}},
    )
    assert compile_ir(tenant(), rs) == {
        "schema": "sigma-pol/v1", "rules": [], "no_log": True,
        "rank": [["desc", "bench_intelligence"]], "fallback": {"max_attempts": 2},
    }


SUBSTITUTION_ERRORS = [
    (["cmp", "bench_intelligence", "ge", "$floor"], {},
     "tenant 't1', rule 'r': attribute 'floor' is missing (needed at add.rules[0][3])"),
    (["in", "provider", "$approved"], {"approved": "openai"},
     "tenant 't1', rule 'r': attribute 'approved' must be a list, got str \"openai\" (at add.rules[0][2])"),
    (["cmp", "bench_intelligence", "ge", "$floor"], {"floor": "high"},
     "tenant 't1', rule 'r': attribute 'floor' must be a number, got str \"high\" (at add.rules[0][3])"),
    (["cmp", "bench_intelligence", "ge", "$floor"], {"floor": True},
     "tenant 't1', rule 'r': attribute 'floor' must be a number, got bool true (at add.rules[0][3])"),
    (["eq", "region", "$region"], {"region": ["eu", "us"]},
     "tenant 't1', rule 'r': attribute 'region' must be a string, number or boolean, "
     "got list [\"eu\", \"us\"] (at add.rules[0][2])"),
    (["and", ["eq", "region", "eu"], ["nin", "provider", "$blocked"]], {},
     "tenant 't1', rule 'r': attribute 'blocked' is missing (needed at add.rules[0][2][2])"),
    (["eq", "region", "$bad-name"], {},
     "tenant 't1', rule 'r': bad reference '$bad-name' at add.rules[0][2]"),
]


@pytest.mark.parametrize(("expr", "attrs", "message"), SUBSTITUTION_ERRORS)
def test_substitution_errors(expr: list[Any], attrs: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleCompileError) as info:
        compile_ir(tenant(**attrs), rules({"id": "r", "add": {"rules": [expr]}}))
    assert str(info.value) == message
    assert isinstance(info.value, ConfigError)
    assert info.value.tenant == "t1" and info.value.rule == "r"


def test_when_type_error_names_tenant_rule_attribute() -> None:
    with pytest.raises(RuleCompileError) as info:
        compile_ir(tenant(seats="many"), rules(add_floor({"seats": {"ge": 10}})))
    assert str(info.value) == "tenant 't1', rule 'r': attribute 'seats' must be a number for when.seats.ge, got \"many\""
    assert info.value.attribute == "seats"


LOAD_ERRORS = [
    ({"rules": "nope"}, "<memory>: expected a 'rules:' list"),
    ([{"when": {}, "add": {"no_log": True}}], "<memory>: rule #1: id: expected a name of letters, digits and _.:- , got null"),
    ([{"id": "a", "add": {"no_log": True}}, {"id": "a", "add": {"no_log": True}}], "<memory>: rule 'a': duplicate id"),
    ([{"id": "a", "wen": {}, "add": {"no_log": True}}],
     "<memory>: rule 'a': unknown key(s) wen (expected id, when, add, description)"),
    ([{"id": "a", "when": {"plan": {"gte": 1}}, "add": {"no_log": True}}],
     "<memory>: rule 'a': when.plan: unknown operator 'gte' (expected one of: present, eq, ne, in, not_in, ge, gt, le, lt, contains)"),
    ([{"id": "a", "when": {"seats": {"ge": "ten"}}, "add": {"no_log": True}}],
     "<memory>: rule 'a': when.seats.ge: ge needs a number, got \"ten\""),
    ([{"id": "a", "when": {"plan": None}, "add": {"no_log": True}}],
     "<memory>: rule 'a': when.plan: null is not a value; use {present: false}"),
    ([{"id": "a", "when": "sometimes", "add": {"no_log": True}}],
     "<memory>: rule 'a': when: expected a mapping of attribute tests or 'always', got \"sometimes\""),
    ([{"id": "a"}], "<memory>: rule 'a': add: expected a mapping with some of: rules, no_log, rank, fallback"),
    ([{"id": "a", "add": {"rule": []}}],
     "<memory>: rule 'a': add: unknown key(s) rule (expected some of: rules, no_log, rank, fallback)"),
    ([{"id": "a", "add": {"rules": [["gte", "bench_intelligence", 1]]}}],
     "<memory>: rule 'a': add.rules[0][0]: unknown operator 'gte' (expected one of: eq, ne, in, nin, cmp, has, and, or, not)"),
    ([{"id": "a", "add": {"rules": [["and", ["eq", "region"]]]}}],
     "<memory>: rule 'a': add.rules[0][1]: eq takes 2 arguments, got 1"),
    ([{"id": "a", "add": {"rules": [["eq", "$field", "x"]]}}],
     "<memory>: rule 'a': add.rules[0][1]: $references are only allowed in value positions"),
    ([{"id": "a", "add": {"no_log": "yes"}}], "<memory>: rule 'a': add.no_log: expected true or false, got \"yes\""),
    ([{"id": "a", "add": {"fallback": {"max_attempts": 0}}}],
     "<memory>: rule 'a': add.fallback: expected {max_attempts: <integer >= 1>}, got {\"max_attempts\": 0}"),
    ([{"id": "a", "add": {"rank": ["asc"]}}],
     "<memory>: rule 'a': add.rank: expected a list of sort keys like [asc, est_cost], got [\"asc\"]"),
]


@pytest.mark.parametrize(("data", "message"), LOAD_ERRORS)
def test_load_errors(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules(data)
    assert str(info.value) == message


def test_load_reports_every_bad_rule(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - {id: a, add: {no_log: 1}}\n  - {id: b, add: {no_log: true}}\n  - {id: c}\n")
    with pytest.raises(ConfigError) as info:
        load_rules(path)
    assert str(info.value) == (
        f"{path}: rule 'a': add.no_log: expected true or false, got 1; "
        "rule 'c': add: expected a mapping with some of: rules, no_log, rank, fallback")


def test_load_rules_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read: No such file or directory"):
        load_rules(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("rules: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_rules(tmp_path / "bad.yaml")


SHIPPED = {
    "acme-free": ([["cmp", "bench_intelligence", "ge", 0.5]], False),
    "globex-enterprise": ([["in", "provider", ["openai", "anthropic", "azure"]]], False),
    "initech-eu": ([["eq", "region", "eu"]], False),
    "umbrella-health": ([["nin", "provider", ["deepseek", "groq"]]], True),
    "stark-vip": ([["cmp", "bench_intelligence", "ge", 0.55]], False),
    "wayne-mixed": ([["cmp", "bench_intelligence", "ge", 0.5], ["in", "provider", ["mistral", "scaleway", "azure"]],
                     ["eq", "region", "eu"]], False),
}


@pytest.mark.parametrize("tid", sorted(SHIPPED))
def test_shipped_tenants_compile(tid: str) -> None:
    table = load_tenants(str(POLICIES / "tenants.yaml"))
    ir = compile_ir(table.get(tid), load_rules(POLICIES / "rules.yaml"))  # type: ignore[arg-type]
    exprs, no_log = SHIPPED[tid]
    assert [c["rule"] for c in ir["rules"]] == exprs
    assert ir["no_log"] is no_log
    assert all(c["from"] == f"rule:{c['id'].split('#')[0]}" for c in ir["rules"])


def test_shipped_table_has_exactly_the_six_tenants() -> None:
    assert sorted(load_tenants(str(POLICIES / "tenants.yaml")).ids()) == sorted(SHIPPED)


# --- with the policy core ---------------------------------------------------

def test_shipped_tenants_compile_to_valid_policies() -> None:
    table = load_tenants(str(POLICIES / "tenants.yaml"))
    rs = load_rules(POLICIES / "rules.yaml")
    assert check_tenants(table, rs) == []
    umbrella = compile_policy(table.get("umbrella-health"), rs)  # type: ignore[arg-type]
    assert umbrella.no_log is True
    assert [(c.id, c.from_) for c in umbrella.clauses] == [("blocked-providers", "rule:blocked-providers")]
    assert umbrella.fingerprint.startswith("pol_")


def test_compile_policy_names_the_rule_of_an_invalid_clause() -> None:
    rs = rules({"id": "ok", "add": {"rules": [["eq", "region", "eu"]]}},
               {"id": "typo", "add": {"rules": [["eq", "regoin", "eu"]]}})
    with pytest.raises(TenantPolicyError) as info:
        compile_policy(tenant(), rs)
    assert str(info.value) == ("tenant 't1': compiled policy is invalid: rules[1].rule[1] (from rule:typo): "
                               "unknown field 'regoin' (did you mean 'region'?)")
    assert info.value.errors == [{"path": "rules[1].rule[1]",
                                  "message": "unknown field 'regoin' (did you mean 'region'?)"}]
    assert isinstance(info.value, ConfigError)


# A request policy combined with its tenant's policy can never pass an entry
# that the tenant's policy alone drops (the request only narrows).

PROVIDERS = ["openai", "anthropic", "google", "mistral", "azure", "groq", "deepseek", "scaleway"]
providers = st.lists(st.sampled_from(PROVIDERS), min_size=1, max_size=4, unique=True)
floors = st.sampled_from([0.3, 0.45, 0.5, 0.55, 0.6])

leaf = st.one_of(
    st.tuples(st.sampled_from(["in", "nin"]), st.just("provider"), providers).map(list),
    st.tuples(st.sampled_from(["eq", "ne"]), st.just("region"), st.sampled_from(["eu", "us", "cn"])).map(list),
    st.tuples(st.just("cmp"), st.sampled_from(["bench_intelligence", "price_in", "est_cost"]),
              st.sampled_from(["ge", "gt", "le", "lt"]), floors).map(list),
    st.tuples(st.just("has"), st.just("capabilities"), st.sampled_from(["tools", "vision", "json"])).map(list),
    st.tuples(st.just("eq"), st.just("zdr"), st.booleans()).map(list),
)
expr = st.recursive(leaf, lambda sub: st.one_of(
    st.lists(sub, min_size=1, max_size=3).map(lambda xs: ["and", *xs]),
    st.lists(sub, min_size=1, max_size=3).map(lambda xs: ["or", *xs]),
    sub.map(lambda x: ["not", x]),
), max_leaves=4)
tenant_attrs = st.fixed_dictionaries({"plan": st.sampled_from(["free", "pro", "enterprise"])}, optional={
    "approved_providers": providers, "blocked_providers": providers,
    "region": st.sampled_from(["eu", "us"]), "quality_floor": floors, "sensitive": st.booleans(),
})
request_ir = st.fixed_dictionaries({"rules": st.lists(expr, max_size=3)}, optional={
    "no_log": st.booleans(), "fallback": st.fixed_dictionaries({"max_attempts": st.integers(1, 5)}),
    "rank": st.just([["desc", "bench_intelligence"]]),
})


@pytest.fixture(scope="module")
def shipped() -> tuple[Any, Any]:
    """The shipped catalog and rules, read once (they are immutable) rather than once per example."""
    return load_catalog(POLICIES / "catalog.yaml"), load_rules(POLICIES / "rules.yaml")


@settings(max_examples=150, deadline=None)
@given(attrs=tenant_attrs, request=request_ir)
def test_request_policy_never_widens_the_tenant_policy(shipped: tuple[Any, Any], attrs: dict[str, Any],
                                                       request: dict[str, Any]) -> None:
    catalog, rules = shipped
    tenant_policy = compile_policy(tenant(**attrs), rules)
    combined = combine(tenant_policy, parse_policy(request))
    body = RequestProfile.from_body({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100})
    allowed = {r.entry.id for r in evaluate(tenant_policy, catalog, body).ranked}
    passed = {r.entry.id for r in evaluate(combined, catalog, body).ranked}
    assert passed <= allowed
    assert combined.no_log >= tenant_policy.no_log
    assert combined.max_attempts <= tenant_policy.max_attempts
