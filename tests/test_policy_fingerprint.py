"""Canonical form and fingerprint: equal policies share one, any semantic change changes it."""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routecar.policy import fingerprint, parse_policy
from routecar.policy.ops import SCHEMA

BASE: dict[str, Any] = {
    "schema": SCHEMA,
    "rules": [
        {"id": "floor", "from": "rule:free", "rule": ["cmp", "bench_intelligence", "ge", 0.5]},
        ["in", "provider", ["openai", "anthropic", "azure"]],
        ["or", ["eq", "region", "eu"], ["has", "capabilities", "vision"]],
        ["not", ["eq", "zdr", False]],
    ],
    "rank": [["asc", "price_in"], ["desc", "bench_intelligence"]],
    "fallback": {"max_attempts": 2},
    "no_log": True,
}


def fp(policy: Any) -> str:
    return parse_policy(policy).fingerprint


def test_format_and_digest() -> None:
    p = parse_policy(BASE)
    assert re.fullmatch(r"pol_[0-9a-f]{6}", p.fingerprint)
    assert re.fullmatch(r"[0-9a-f]{64}", p.digest)
    assert p.fingerprint == "pol_" + p.digest[:6] == fingerprint(BASE)
    blob = SCHEMA + "\n" + json.dumps(p.canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert p.digest == hashlib.sha256(blob.encode()).hexdigest()


def test_canonical_form_of_the_empty_policy_has_every_default() -> None:
    assert parse_policy({}).canonical == {
        "schema": SCHEMA, "rules": [],
        "rank": [["asc", "est_cost"], ["desc", "bench_intelligence"], ["asc", "id"]],
        "fallback": {"max_attempts": 3}, "no_log": False,
    }


@settings(max_examples=50, deadline=None)
@given(st.randoms(use_true_random=False), st.sampled_from([None, 0, 2, 4]))
def test_key_order_and_whitespace_do_not_matter(rnd: random.Random, indent: int | None) -> None:
    def shuffled(v: Any) -> Any:
        if isinstance(v, dict):
            items = list(v.items())
            rnd.shuffle(items)
            return {k: shuffled(x) for k, x in items}
        if isinstance(v, list):
            return [shuffled(x) for x in v]
        return v
    text = json.dumps(shuffled(BASE), indent=indent, separators=(",", ": ") if indent is None else None)
    assert fp(text) == fp(BASE) == fp(json.dumps(BASE).encode())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["openai", "anthropic", "azure", "mistral", "groq"]), min_size=1, max_size=12),
       st.sampled_from(["in", "nin"]), st.randoms(use_true_random=False))
def test_in_nin_list_order_and_duplicates_do_not_matter(values: list[str], op: str, rnd: random.Random) -> None:
    other = values + values[: rnd.randint(0, len(values))]
    rnd.shuffle(other)
    assert fp({"rules": [[op, "provider", values]]}) == fp({"rules": [[op, "provider", other]]})
    assert parse_policy({"rules": [[op, "provider", other]]}).canonical["rules"] == [[op, "provider", sorted(set(values))]]


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=-10**6, max_value=10**6))
def test_integral_floats_equal_ints(n: int) -> None:
    assert fp({"rules": [["cmp", "price_in", "ge", n]]}) == fp({"rules": [["cmp", "price_in", "ge", float(n)]]})
    assert fp({"rules": [["in", "context_window", [n, n + 1]]]}) == fp({"rules": [["in", "context_window", [n + 1.0, n]]]})
    assert fp('{"rules": [["eq", "max_output", %d]]}' % n) == fp('{"rules": [["eq", "max_output", %d.0]]}' % n)


def test_negative_zero_equals_zero() -> None:
    assert fp({"rules": [["cmp", "price_in", "ge", -0.0]]}) == fp({"rules": [["cmp", "price_in", "ge", 0]]})


@pytest.mark.parametrize("explicit", [
    {"fallback": {"max_attempts": 3}},
    {"fallback": {}},
    {"no_log": False},
    {"schema": SCHEMA},
    {"rules": []},
    {"rank": [["asc", "est_cost"], ["desc", "bench_intelligence"]]},
    {"rank": [["asc", "est_cost"], ["desc", "bench_intelligence"], ["asc", "id"]]},
    {"rank": [["asc", "est_cost"], ["desc", "bench_intelligence"], ["asc", "est_cost"]]},
    {"schema": SCHEMA, "rules": [], "rank": [["asc", "est_cost"], ["desc", "bench_intelligence"], ["asc", "id"]],
     "fallback": {"max_attempts": 3}, "no_log": False},
])
def test_explicit_defaults_do_not_matter(explicit: dict[str, Any]) -> None:
    assert fp(explicit) == fp({})


def test_rank_keys_after_id_and_repeated_fields_do_not_matter() -> None:
    assert fp({"rank": [["asc", "id"], ["desc", "price_in"]]}) == fp({"rank": [["asc", "id"]]})
    assert fp({"rank": [["desc", "price_in"], ["asc", "price_in"]]}) == fp({"rank": [["desc", "price_in"]]})
    assert fp({"rank": [["desc", "price_in"]]}) == fp({"rank": [["desc", "price_in"], ["asc", "id"]]})


def test_clause_ids_from_and_order_do_not_matter() -> None:
    bare = copy.deepcopy(BASE)
    bare["rules"] = [c["rule"] if isinstance(c, dict) else c for c in BASE["rules"]]
    relabelled = copy.deepcopy(BASE)
    relabelled["rules"] = [{"id": f"c{i}", "from": "elsewhere", "rule": r} for i, r in enumerate(bare["rules"])]
    reordered = copy.deepcopy(BASE)
    reordered["rules"] = list(reversed(BASE["rules"]))
    duplicated = copy.deepcopy(BASE)
    duplicated["rules"] = BASE["rules"] + bare["rules"][:2]
    assert fp(bare) == fp(relabelled) == fp(reordered) == fp(duplicated) == fp(BASE)


A, B, C = ["eq", "region", "eu"], ["cmp", "price_in", "le", 1], ["has", "capabilities", "tools"]


@pytest.mark.parametrize(("x", "y"), [
    (["and", A, B], ["and", B, A]),
    (["or", A, B], ["or", B, A, B]),
    (["and", A, ["and", B, C]], ["and", ["and", A, B], C]),
    (["or", A, ["or", B, C]], ["or", C, B, A]),
    (["and", A], A),
    (["or", A, A], A),
    (["not", ["not", A]], A),
    (["not", ["not", ["not", A]]], ["not", A]),
    (["or", ["not", ["not", A]], B], ["or", B, A]),
])
def test_and_or_not_normalisation(x: Any, y: Any) -> None:
    assert fp({"rules": [x]}) == fp({"rules": [y]})


def test_top_level_and_equals_separate_clauses() -> None:
    assert fp({"rules": [["and", A, B], C]}) == fp({"rules": [A, B, C]}) == fp({"rules": [C, ["and", B, A], A]})


SEMANTIC_CHANGES: list[tuple[str, Any]] = [
    ("value", lambda p: p["rules"][0]["rule"].__setitem__(3, 0.51)),
    ("cmp op", lambda p: p["rules"][0]["rule"].__setitem__(2, "gt")),
    ("field", lambda p: p["rules"][0]["rule"].__setitem__(1, "price_in")),
    ("in list member", lambda p: p["rules"][1][2].append("mistral")),
    ("in -> nin", lambda p: p["rules"][1].__setitem__(0, "nin")),
    ("or -> and", lambda p: p["rules"][2].__setitem__(0, "and")),
    ("drop not", lambda p: p["rules"].__setitem__(3, ["eq", "zdr", False])),
    ("eq value", lambda p: p["rules"][2][1].__setitem__(2, "us")),
    ("has value", lambda p: p["rules"][2][2].__setitem__(2, "tools")),
    ("bool value", lambda p: p["rules"][3][1].__setitem__(2, True)),
    ("drop clause", lambda p: p["rules"].pop(1)),
    ("add clause", lambda p: p["rules"].append(["eq", "healthy", True])),
    ("no_log", lambda p: p.__setitem__("no_log", False)),
    ("max_attempts", lambda p: p.__setitem__("fallback", {"max_attempts": 3})),
    ("rank direction", lambda p: p["rank"][0].__setitem__(0, "desc")),
    ("rank field", lambda p: p["rank"][0].__setitem__(1, "price_out")),
    ("rank order", lambda p: p["rank"].reverse()),
    ("default rank", lambda p: p.pop("rank")),
]


@pytest.mark.parametrize(("what", "change"), SEMANTIC_CHANGES, ids=[c[0] for c in SEMANTIC_CHANGES])
def test_semantic_change_changes_fingerprint(what: str, change: Any) -> None:
    changed = copy.deepcopy(BASE)
    change(changed)
    assert parse_policy(changed).digest != parse_policy(BASE).digest


leaf = st.one_of(
    st.tuples(st.sampled_from(["eq", "ne"]), st.just("region"), st.sampled_from(["eu", "us", "cn"])).map(list),
    st.tuples(st.sampled_from(["in", "nin"]), st.just("provider"),
              st.lists(st.sampled_from(["openai", "groq", "mistral"]), min_size=1, max_size=3)).map(list),
    st.tuples(st.just("cmp"), st.sampled_from(["price_in", "bench_intelligence"]), st.sampled_from(["ge", "gt", "le", "lt"]),
              st.sampled_from([0, 0.5, 1, 2.5])).map(list),
    st.tuples(st.just("has"), st.just("capabilities"), st.sampled_from(["tools", "vision"])).map(list),
)
exprs = st.recursive(leaf, lambda kids: st.one_of(
    st.lists(kids, min_size=1, max_size=3).map(lambda xs: ["and", *xs]),
    st.lists(kids, min_size=1, max_size=3).map(lambda xs: ["or", *xs]),
    kids.map(lambda x: ["not", x])), max_leaves=6)
policies = st.fixed_dictionaries({"rules": st.lists(exprs, max_size=4)}, optional={
    "no_log": st.booleans(), "fallback": st.fixed_dictionaries({"max_attempts": st.integers(1, 10)}),
    "rank": st.lists(st.tuples(st.sampled_from(["asc", "desc"]),
                               st.sampled_from(["price_in", "est_cost", "bench_intelligence", "id"])).map(list),
                     min_size=1, max_size=3)})


@settings(max_examples=200, deadline=None)
@given(policies, st.randoms(use_true_random=False))
def test_fingerprint_is_a_function_of_the_canonical_form(policy: dict[str, Any], rnd: random.Random) -> None:
    p = parse_policy(policy)
    # re-parsing the canonical form, the IR, or a clause-shuffled copy is a fixed point
    assert parse_policy(p.canonical).canonical == p.canonical
    assert parse_policy(p.to_ir()).digest == p.digest
    shuffled = dict(policy, rules=rnd.sample(policy["rules"], len(policy["rules"])))
    assert parse_policy(shuffled).digest == p.digest
    flipped = dict(policy, no_log=not policy.get("no_log", False))
    assert parse_policy(flipped).digest != p.digest
    added = dict(policy, rules=[*policy["rules"], ["eq", "model", "never-seen"]])
    assert parse_policy(added).digest != p.digest
