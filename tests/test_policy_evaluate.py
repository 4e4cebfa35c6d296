"""evaluate(policy, catalog, request, health) -> Decision: verdicts, fit checks, ranking, plan, caches."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routecar.catalog import Catalog, CatalogEntry, load_catalog, parse_catalog
from routecar.errors import InvalidPolicy, NoCandidate
from routecar.policy import PolicyCache, RequestProfile, combine, est_cost, evaluate, parse_policy

EXAMPLES = Path(__file__).resolve().parent.parent / "policies" / "examples"
CAT = load_catalog()
SHORT = RequestProfile.from_body({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello, how are you?"}]})


def P(policy: Any, catalog: Catalog = CAT):
    return parse_policy(policy, catalog.registry)


def ids(decision) -> list[str]:
    return [r.entry.id for r in decision.ranked]


def entry(id: str, **kw: Any) -> dict[str, Any]:
    base = {"id": id, "model": id.split("/")[-1], "provider": id.split("/")[0], "region": "us",
            "bench_intelligence": 0.5, "price_in": 1.0, "price_out": 2.0, "context_window": 100_000,
            "max_output": 8192, "capabilities": ["tools"], "zdr": False}
    return {**base, **kw}


class FakeHealth:
    def __init__(self, live: Mapping[str, Mapping[str, Any]]) -> None:
        self.live = live
        self.calls = 0

    def live_fields(self, entry_id: str) -> Mapping[str, Any]:
        self.calls += 1
        return self.live.get(entry_id, {"healthy": True, "latency_ms": None})

    def cooled_ids(self) -> frozenset[str]:
        return frozenset(i for i, live in self.live.items() if not live.get("healthy", True))


# -- acceptance: the six product-page examples ------------------------------------

@pytest.mark.parametrize(("name", "pick"), [
    ("free-tier", "groq/gpt-oss-120b"),
    ("enterprise", "openai/gpt-5.5-nano"),
    ("eu-only", "mistral/mistral-small-3"),
    ("sensitive", "mistral/mistral-small-3"),
    ("vip", "anthropic/claude-sonnet-4-6"),
    ("mixed", "mistral/mistral-medium-3"),
])
def test_six_examples_give_the_expected_picks(name: str, pick: str) -> None:
    raw = (EXAMPLES / f"{name}.json").read_text()
    policy = P(raw)
    assert all(c.id for c in policy.clauses), "example clauses are labelled"
    d = evaluate(policy, CAT, SHORT)
    assert d.selected is not None and d.selected.entry.id == pick
    assert d.to_dict()["selected"] == pick
    assert policy.no_log is (name == "sensitive")


def test_examples_directory_holds_exactly_the_six() -> None:
    assert sorted(p.stem for p in EXAMPLES.glob("*.json")) == [
        "enterprise", "eu-only", "free-tier", "mixed", "sensitive", "vip"]


# -- verdicts ---------------------------------------------------------------------

def test_every_entry_gets_a_verdict_with_the_first_failing_clause_in_policy_order() -> None:
    policy = P({"rules": [
        {"id": "eu", "rule": ["eq", "region", "eu"]},
        ["cmp", "bench_intelligence", "ge", 0.5],
        {"id": "caps", "rule": ["or", ["has", "capabilities", "vision"], ["eq", "zdr", True]]},
    ]})
    d = evaluate(policy, CAT, SHORT)
    cands = d.to_dict()["candidates"]
    assert [c["id"] for c in cands] == [e.id for e in CAT.entries]
    by_id = {c["id"]: c for c in cands}
    assert by_id["openai/gpt-5.5"]["failed"] == {
        "index": 0, "id": "eu", "rule": ["eq", "region", "eu"], "field": "region", "value": "us"}
    # fails both clause 0 and 1: clause 0 is reported
    assert by_id["openai/gpt-5.5-nano"]["failed"]["index"] == 0
    assert by_id["mistral/mistral-small-3"]["failed"] == {
        "index": 1, "id": "rules[1]", "rule": ["cmp", "bench_intelligence", "ge", 0.5],
        "field": "bench_intelligence", "value": 0.42}
    passed = {c["id"] for c in cands if c["passed"]}
    assert passed == set(ids(d)) == {"google/gemini-3.5-flash@eu", "mistral/mistral-large-3",
                                     "mistral/mistral-medium-3", "azure/gpt-5.5@eu"}
    assert all(c["failed"] is None for c in cands if c["passed"])
    dropped = {x["id"]: x for x in d.dropped()}
    assert set(dropped) == {e.id for e in CAT.entries} - passed
    assert dropped["openai/gpt-5.5"] == {
        "id": "openai/gpt-5.5", "provider": "openai", "model": "gpt-5.5",
        "reason": 'eu failed: ["eq", "region", "eu"] (actual region="us")', "failed": by_id["openai/gpt-5.5"]["failed"]}
    err = NoCandidate(evaluate(P({"rules": [{"id": "mars", "rule": ["eq", "region", "mars"]}]}), CAT, SHORT).dropped())
    assert str(err).startswith('no catalog entry satisfies policy None: openai/gpt-5.5: mars failed: ')


def test_multi_field_clause_reports_every_field_it_read() -> None:
    d = evaluate(P({"rules": [{"id": "c", "rule": ["and", ["eq", "region", "eu"], ["eq", "zdr", True]]}]}), CAT, SHORT)
    failed = dict((e.id, f) for e, f in d.verdicts)["openai/gpt-5.5"]
    assert failed is not None and failed.field == "region,zdr" and failed.value == {"region": "us", "zdr": False}


def test_clause_on_a_missing_extra_value() -> None:
    cat = parse_catalog([entry("a/x", tier="gold"), entry("b/y")])
    d = evaluate(P({"rules": [["eq", "tier", "gold"]]}, cat), cat)
    assert ids(d) == ["a/x"]
    assert d.to_dict()["candidates"][1]["failed"]["value"] is None
    assert ids(evaluate(P({"rules": [["ne", "tier", "gold"]]}, cat), cat)) == ["b/y"]
    assert ids(evaluate(P({"rules": [["nin", "tier", ["gold"]]]}, cat), cat)) == ["b/y"]


# -- implicit request-fit checks --------------------------------------------------

FIT_CAT = parse_catalog([
    entry("p/small", context_window=1000, max_output=100, capabilities=["tools", "vision"]),
    entry("p/notools", capabilities=["vision"]),
    entry("p/novision", capabilities=["tools"]),
    entry("p/all", capabilities=["tools", "vision"]),
])


@pytest.mark.parametrize(("req", "failures"), [
    (RequestProfile(prompt_tokens=990, max_tokens=20), {"p/small": ("fit:context_window", "context_window", 1000)}),
    (RequestProfile(prompt_tokens=10, max_tokens=200), {"p/small": ("fit:max_output", "max_output", 100)}),
    (RequestProfile(prompt_tokens=10, tools=True), {"p/notools": ("fit:tools", "capabilities", ["vision"])}),
    (RequestProfile(prompt_tokens=10, vision=True), {"p/novision": ("fit:vision", "capabilities", ["tools"])}),
    (RequestProfile(prompt_tokens=1000), {}),  # max_tokens unset: only the prompt must fit
    (RequestProfile(prompt_tokens=1001), {"p/small": ("fit:context_window", "context_window", 1000)}),
])
def test_fit_checks(req: RequestProfile, failures: dict[str, tuple[str, str, Any]]) -> None:
    d = evaluate(P({}, FIT_CAT), FIT_CAT, req)
    got = {e.id: (f.id, f.field, f.value) for e, f in d.verdicts if f is not None}
    assert got == failures
    assert all(f.index is None for _, f in d.verdicts if f is not None)
    assert set(ids(d)) == {e.id for e in FIT_CAT.entries} - set(failures)


def test_a_clause_failure_is_reported_before_a_fit_failure() -> None:
    d = evaluate(P({"rules": [["eq", "region", "eu"]]}, FIT_CAT), FIT_CAT, RequestProfile(tools=True))
    assert d.to_dict()["candidates"][1]["failed"]["index"] == 0


# -- est_cost and the request profile ---------------------------------------------

def test_est_cost_arithmetic() -> None:
    e = CatalogEntry.model_validate(entry("a/b", price_in=3.0, price_out=15.0))
    assert est_cost(e, RequestProfile(prompt_tokens=1000, max_tokens=500)) == pytest.approx((1000 * 3 + 500 * 15) / 1e6)
    assert est_cost(e, RequestProfile(prompt_tokens=1000)) == pytest.approx((1000 * 3 + 256 * 15) / 1e6)
    d = evaluate(P({"rank": [["asc", "est_cost"]]}, CAT), CAT, RequestProfile(prompt_tokens=100, max_tokens=10))
    for r in d.ranked:
        assert r.est_cost == r.keys["est_cost"] == pytest.approx((100 * r.entry.price_in + 10 * r.entry.price_out) / 1e6)


def test_est_cost_clause_depends_on_the_request() -> None:
    policy = P({"rules": [["cmp", "est_cost", "le", 0.01]]})
    small = ids(evaluate(policy, CAT, RequestProfile(prompt_tokens=100, max_tokens=100)))
    big = ids(evaluate(policy, CAT, RequestProfile(prompt_tokens=20_000, max_tokens=100)))
    assert set(big) < set(small)
    assert "openai/gpt-5.5" in small and "openai/gpt-5.5" not in big


@pytest.mark.parametrize(("body", "expected"), [
    ({}, RequestProfile(None, 3, None, False, False, False)),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 400}]},
     RequestProfile("gpt-4o", 100 + 4 + 3)),
    ({"messages": [{"role": "system", "content": "abcd"}, {"role": "user", "content": "efgh"}], "max_tokens": 50,
      "stream": True}, RequestProfile(None, 2 + 8 + 3, 50, stream=True)),
    ({"messages": [], "max_completion_tokens": 7, "max_tokens": 99}, RequestProfile(None, 3, 7)),
    ({"messages": [], "max_tokens": True}, RequestProfile(None, 3, None)),
    ({"messages": [], "max_tokens": -1}, RequestProfile(None, 3, None)),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 40},
                                                {"type": "image_url", "image_url": {"url": "data:"}}]}]},
     RequestProfile(None, 10 + 85 + 4 + 3, vision=True)),
    ({"model": 5, "messages": "nope", "stream": "yes"}, RequestProfile(None, 3)),
])
def test_request_profile_from_body(body: dict[str, Any], expected: RequestProfile) -> None:
    assert RequestProfile.from_body(body) == expected


def test_request_profile_counts_tools() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    p = RequestProfile.from_body({"messages": [], "tools": tools})
    assert p.tools and p.prompt_tokens == len(json.dumps(tools)) // 4 + 3
    assert RequestProfile.from_body({"messages": [], "functions": [{"name": "f"}]}).tools
    assert not RequestProfile.from_body({"messages": [], "tools": []}).tools


# -- ranking ----------------------------------------------------------------------

def test_default_rank_is_cost_then_quality_then_id() -> None:
    d = evaluate(P({}), CAT, SHORT)
    keys = [(r.keys["est_cost"], -r.keys["bench_intelligence"], r.keys["id"]) for r in d.ranked]
    assert keys == sorted(keys) and len(d.ranked) == len(CAT.entries)


def test_asc_and_desc() -> None:
    up = evaluate(P({"rank": [["asc", "bench_intelligence"]]}), CAT, SHORT)
    down = evaluate(P({"rank": [["desc", "bench_intelligence"]]}), CAT, SHORT)
    assert [r.keys["bench_intelligence"] for r in up.ranked] == sorted(e.bench_intelligence for e in CAT.entries)
    assert [r.keys["bench_intelligence"] for r in down.ranked] == sorted((e.bench_intelligence for e in CAT.entries),
                                                                        reverse=True)
    # ties (0.60: gpt-5.5 and azure gpt-5.5@eu) broken by ascending id in both directions
    assert ids(down)[2:4] == ["azure/gpt-5.5@eu", "openai/gpt-5.5"]
    assert ids(evaluate(P({"rank": [["desc", "id"]]}), CAT, SHORT)) == sorted((e.id for e in CAT.entries), reverse=True)


@pytest.mark.parametrize("direction", ["asc", "desc"])
def test_missing_extra_values_sort_last(direction: str) -> None:
    cat = parse_catalog([entry("a/1", score=3), entry("a/2"), entry("a/3", score=1), entry("a/4"), entry("a/5", score=2)])
    d = evaluate(P({"rank": [[direction, "score"]]}, cat), cat)
    assert ids(d) == (["a/3", "a/5", "a/1"] if direction == "asc" else ["a/1", "a/5", "a/3"]) + ["a/2", "a/4"]


@settings(max_examples=40, deadline=None)
@given(st.randoms(use_true_random=False),
       st.lists(st.tuples(st.sampled_from(["asc", "desc"]),
                          st.sampled_from(["est_cost", "bench_intelligence", "price_out", "zdr", "region", "tier",
                                           "context_window", "latency_ms"])).map(list), min_size=1, max_size=3))
def test_rank_is_total_and_independent_of_catalog_order(rnd: random.Random, rank: list[list[str]]) -> None:
    entries = list(CAT.entries)
    rnd.shuffle(entries)
    shuffled = Catalog.from_entries(entries)
    policy = P({"rank": rank})
    a, b = evaluate(policy, CAT, SHORT), evaluate(policy, shuffled, SHORT)
    assert ids(a) == ids(b)
    assert sorted(ids(a)) == sorted(e.id for e in CAT.entries)


def test_max_attempts_caps_the_plan() -> None:
    for n in (1, 2, 5, 10):
        d = evaluate(P({"fallback": {"max_attempts": n}}), CAT, SHORT)
        assert [r.entry.id for r in d.plan] == ids(d)[:n]
        assert [r.entry.id for r in d.fallback] == ids(d)[1:n]
        assert d.to_dict()["fallback"] == ids(d)[1:n]
    none = evaluate(P({"rules": [["eq", "region", "mars"]]}), CAT, SHORT)
    assert none.selected is None and none.plan == () and none.to_dict()["selected"] is None


# -- dynamic fields, health, memo -------------------------------------------------

def test_dynamic_health_fields_and_cooled_down_entries() -> None:
    health = FakeHealth({"groq/gpt-oss-120b": {"healthy": False, "latency_ms": 100.0},
                         "openai/gpt-5.5-nano": {"healthy": True, "latency_ms": 900.0},
                         "mistral/mistral-small-3": {"healthy": True, "latency_ms": 300.0}})
    policy = P({})
    d = evaluate(policy, CAT, SHORT, health)
    assert ids(d)[-1] == "groq/gpt-oss-120b"  # cooled down: tried only after every healthy one
    assert ids(d)[:-1] == [i for i in ids(evaluate(policy, CAT, SHORT)) if i != "groq/gpt-oss-120b"]
    only_healthy = evaluate(P({"rules": [["eq", "healthy", True]]}), CAT, SHORT, health)
    assert "groq/gpt-oss-120b" not in ids(only_healthy)
    failed = {e.id: f for e, f in only_healthy.verdicts}["groq/gpt-oss-120b"]
    assert failed is not None and (failed.field, failed.value) == ("healthy", False)
    fast = evaluate(P({"rules": [["cmp", "latency_ms", "lt", 500]]}), CAT, SHORT, health)
    assert ids(fast) == ["mistral/mistral-small-3", "groq/gpt-oss-120b"]  # unknown latency never passes cmp
    by_latency = evaluate(P({"rank": [["asc", "latency_ms"]]}), CAT, SHORT, health)
    assert ids(by_latency)[:2] == ["mistral/mistral-small-3", "openai/gpt-5.5-nano"]
    assert ids(by_latency)[-1] == "groq/gpt-oss-120b"
    assert by_latency.ranked[0].keys["latency_ms"] == 300.0


def test_without_health_every_entry_is_healthy_with_unknown_latency() -> None:
    assert len(evaluate(P({"rules": [["eq", "healthy", True]]}), CAT, SHORT).ranked) == len(CAT.entries)
    assert evaluate(P({"rules": [["cmp", "latency_ms", "ge", 0]]}), CAT, SHORT).ranked == ()


def test_static_memo_gives_the_same_result_and_follows_the_catalog_version() -> None:
    policy = P({"rules": [["eq", "region", "eu"], ["cmp", "est_cost", "lt", 1]]})
    first = evaluate(policy, CAT, SHORT)
    assert policy.memo and CAT.version in policy.memo
    assert ids(evaluate(policy, CAT, SHORT)) == ids(first)
    # a new catalog version (one more EU entry) is decided afresh, not from the memo
    newer = Catalog.from_entries([*CAT.entries, CatalogEntry.model_validate(entry("new/eu", region="eu", price_in=0.01,
                                                                                  price_out=0.01, tier="small"))])
    assert newer.version != CAT.version
    assert ids(evaluate(policy, newer, SHORT))[0] == "new/eu"
    assert ids(evaluate(policy, CAT, SHORT)) == ids(first)
    assert set(policy.memo) >= {CAT.version, newer.version}


def test_the_memo_stays_small() -> None:
    policy = P({"rules": [["eq", "region", "eu"]]})
    for i in range(20):
        cat = Catalog.from_entries([CatalogEntry.model_validate(entry(f"p/{i}", region="eu"))])
        assert ids(evaluate(policy, cat)) == [f"p/{i}"]
    assert len(policy.memo) <= 5


# -- combine ----------------------------------------------------------------------

def test_combine_narrows_and_merges() -> None:
    tenant = P({"rules": [{"id": "eu", "rule": ["eq", "region", "eu"]}], "rank": [["desc", "bench_intelligence"]],
                "fallback": {"max_attempts": 4}})
    request = P({"rules": [["in", "provider", ["mistral", "azure"]]], "no_log": True})
    c = combine(tenant, request, CAT.registry)
    assert [x.to_dict() for x in c.clauses] == [
        {"index": 0, "id": "eu", "from": None, "rule": ["eq", "region", "eu"]},
        {"index": 1, "id": None, "from": "request", "rule": ["in", "provider", ["mistral", "azure"]]}]
    assert c.no_log and c.max_attempts == 4 and c.rank[0] == ("desc", "bench_intelligence")
    c2 = combine(tenant, P({"rank": [["asc", "price_in"]], "fallback": {"max_attempts": 9}}), CAT.registry)
    assert c2.rank[0] == ("asc", "price_in") and c2.max_attempts == 4
    c3 = combine(tenant, P({"fallback": {"max_attempts": 2}}), CAT.registry)
    assert c3.max_attempts == 2
    assert combine(P({"no_log": True}), P({}), CAT.registry).no_log


request_rules = st.lists(st.one_of(
    st.tuples(st.sampled_from(["eq", "ne"]), st.just("region"), st.sampled_from(["eu", "us", "cn"])).map(list),
    st.tuples(st.sampled_from(["in", "nin"]), st.just("provider"),
              st.lists(st.sampled_from(CAT.providers()), min_size=1, max_size=4)).map(list),
    st.tuples(st.just("cmp"), st.sampled_from(["bench_intelligence", "price_in", "est_cost"]),
              st.sampled_from(["ge", "le"]), st.sampled_from([0, 0.001, 0.45, 0.5, 1, 5])).map(list),
    st.just(["not", ["eq", "zdr", True]]),
    st.just(["or", ["eq", "region", "eu"], ["not", ["eq", "region", "eu"]]]),
), max_size=4)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(p.stem for p in EXAMPLES.glob("*.json"))), request_rules, st.booleans(),
       st.integers(1, 10))
def test_combine_never_loosens_the_tenant(name: str, rules: list[Any], no_log: bool, attempts: int) -> None:
    tenant = P((EXAMPLES / f"{name}.json").read_text())
    request = P({"rules": rules, "no_log": no_log, "fallback": {"max_attempts": attempts},
                 "rank": [["desc", "price_in"]]})
    c = combine(tenant, request, CAT.registry)
    t_ids, c_ids = set(ids(evaluate(tenant, CAT, SHORT))), set(ids(evaluate(c, CAT, SHORT)))
    assert c_ids <= t_ids
    assert c.no_log >= tenant.no_log and c.max_attempts <= tenant.max_attempts


# -- PolicyCache ------------------------------------------------------------------

def test_policy_cache() -> None:
    cache = PolicyCache(CAT.registry)
    text = '{"rules": [["in", "provider", ["openai", "azure"]]]}'
    a = cache.parse(text)
    assert cache.parse(text) is a and cache.hits == 1 and cache.misses == 1
    # whitespace and bytes vs str: the same policy object
    assert cache.parse('{ "rules" : [["in","provider",["openai","azure"]]] }') is a
    assert cache.parse(text.encode()) is a
    assert cache.parse({"rules": [["in", "provider", ["openai", "azure"]]]}) is a
    # written differently: equal (one fingerprint) but its own object, so traces show it as written
    other = cache.parse('{"rules": [{"id": "approved", "rule": ["in", "provider", ["azure", "openai", "azure"]]}]}')
    assert other == a and other is not a
    assert other.clauses[0].id == "approved" and other.clauses[0].rule == ["in", "provider", ["azure", "openai", "azure"]]
    bad = '{"rules": [["eq", "regoin", "eu"]]}'
    for _ in range(2):
        with pytest.raises(InvalidPolicy) as ei:
            cache.parse(bad)
        assert ei.value.errors == [{"path": "rules[0][1]", "message": "unknown field 'regoin' (did you mean 'region'?)"}]
    # text keys are exact: another spelling or bytes is a miss that dedupes to the same object
    assert cache.hits == 2 and cache.misses == 5


def test_policy_cache_combine_is_memoised_and_independent_of_spelling_order() -> None:
    tenant = P({"rank": [["desc", "bench_intelligence"]], "fallback": {"max_attempts": 5}})
    implicit, explicit = "{}", '{"rank": [["asc", "est_cost"], ["desc", "bench_intelligence"]], "fallback": {"max_attempts": 3}}'
    for order in ((implicit, explicit), (explicit, implicit)):
        cache = PolicyCache(CAT.registry)
        for text in order:
            cache.parse(text)
        a = cache.combine(tenant, cache.parse(implicit))
        b = cache.combine(tenant, cache.parse(explicit))
        assert cache.combine(tenant, cache.parse(implicit)) is a
        assert (a.rank[0], a.max_attempts) == (("desc", "bench_intelligence"), 5)
        assert (b.rank[0], b.max_attempts) == (("asc", "est_cost"), 3)


def test_policies_from_an_lru_evicted_cache_still_parse() -> None:
    cache = PolicyCache(CAT.registry, maxsize=2)
    texts = ['{"rules": [["cmp", "price_in", "le", %d]]}' % i for i in range(5)]
    first = [cache.parse(t) for t in texts]
    assert [cache.parse(t).digest for t in texts] == [p.digest for p in first]


def test_combine_over_the_clause_limit_says_whose_clauses() -> None:
    tenant = P({"rules": [["cmp", "price_in", "le", 100 + i] for i in range(40)]})
    request = P({"rules": [["cmp", "price_out", "le", 100 + i] for i in range(30)]})
    with pytest.raises(InvalidPolicy) as ei:
        combine(tenant, request, CAT.registry)
    assert ei.value.errors == [{"path": "rules", "message":
                                "the request's 30 clause(s) and its tenant's 40 together exceed 64 clauses"}]


# -- the hot path's inlined fit checks and cost formula are misfit() and usd() -------------

_ENTRY = st.fixed_dictionaries({
    "context_window": st.integers(1, 3000), "max_output": st.integers(1, 3000),
    "capabilities": st.sampled_from([[], ["tools"], ["vision"], ["tools", "vision"]]),
    "price_in": st.floats(0, 80, allow_nan=False), "price_out": st.floats(0, 80, allow_nan=False)})
_REQUEST = st.builds(RequestProfile, prompt_tokens=st.integers(0, 3000),
                     max_tokens=st.one_of(st.none(), st.integers(0, 3000)), tools=st.booleans(), vision=st.booleans())


@settings(max_examples=200, deadline=None)
@given(st.lists(_ENTRY, min_size=1, max_size=8), _REQUEST,
       st.sampled_from([None, [["asc", "est_cost"]], [["desc", "est_cost"], ["asc", "id"]], [["asc", "id"], ["asc", "est_cost"]]]))
def test_hot_path_keeps_exactly_the_fitting_entries_at_usd_cost(entries, req, rank) -> None:
    from routecar.policy.request import FIT_CHECKS, fit_failure, misfit, usd

    cat = parse_catalog([entry(f"p/m{i}", **e) for i, e in enumerate(entries)])
    d = evaluate(P({"rank": rank} if rank else {}, cat), cat, req)
    need = req.prompt_tokens + (req.max_tokens or 0)
    fits = {e.id for e in cat.entries if misfit(need, req.max_tokens, req.tools, req.vision, e.context_window,
                                                  e.max_output, "tools" in e.capabilities,
                                                  "vision" in e.capabilities) is None}
    assert {r.entry.id for r in d.ranked} == fits
    for r in d.ranked:  # the same float expression: equal to the last bit
        assert r.est_cost == usd(req.prompt_tokens, req.out_tokens, r.entry.price_in, r.entry.price_out)
    for e, f in d.verdicts:  # and a dropped entry is explained by the check that dropped it
        assert (f is None) == (e.id in fits)
        if f is not None:
            assert (f.id, f.field) == fit_failure(e, req)[:2] and f.id in [c[0] for c in FIT_CHECKS]


_FAST_POLICY = st.fixed_dictionaries({}, optional={
    "rules": st.lists(st.sampled_from([["cmp", "est_cost", "le", 0.05], ["cmp", "est_cost", "gt", 0.0001],
                                       ["eq", "healthy", True], ["cmp", "price_in", "le", 40],
                                       ["or", ["eq", "healthy", False], ["cmp", "price_out", "le", 30]]]),
                     max_size=3),
    "rank": st.sampled_from([[["asc", "est_cost"]], [["asc", "est_cost"], ["desc", "context_window"]]])})


# Entries most requests fit, and few prices: ties in est_cost that the other sort keys break.
_FITTING_ENTRY = st.fixed_dictionaries({
    "context_window": st.integers(2000, 3000), "max_output": st.integers(600, 3000),
    "capabilities": st.sampled_from([["tools"], ["tools", "vision"], []]),
    "price_in": st.sampled_from([0.0, 2.0, 35.0]), "price_out": st.sampled_from([2.0, 60.0])})
_SMALL_REQUEST = st.builds(RequestProfile, prompt_tokens=st.integers(0, 1500),
                           max_tokens=st.one_of(st.none(), st.integers(0, 900)), tools=st.booleans(),
                           vision=st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.lists(_FITTING_ENTRY, min_size=1, max_size=8), _SMALL_REQUEST, _FAST_POLICY)
def test_fast_path_decides_as_the_general_loop(entries, req, policy) -> None:
    """The comprehension taken when every survivor fits and nothing cools down gives the order and
    costs of the general loop (taken here because an entry outside this catalog is cooling down)."""
    from routecar.policy.dynamic import HealthSnapshot

    cat = parse_catalog([entry(f"p/m{i}", **e) for i, e in enumerate(entries)])
    p = P(policy, cat)
    fast = evaluate(p, cat, req)
    general = evaluate(p, cat, req, HealthSnapshot(frozenset({"elsewhere/none"}), {}))
    assert (fast.order, fast.costs) == (general.order, general.costs)
    assert [e.id for e, f in fast.verdicts if f is None] == [e.id for e, f in general.verdicts if f is None]


def test_static_rows_have_the_static_row_fields() -> None:
    from routecar.policy.evaluate import StaticRow, _static

    policy = P({"rules": [["eq", "region", "eu"]], "rank": [["asc", "est_cost"], ["desc", "bench_intelligence"]]})
    rows = [StaticRow(*r) for r in _static(policy, CAT).rows]
    assert [r.entry.id for r in rows] == [e.id for e in CAT.entries if e.region == "eu"]
    for r in rows:
        e = CAT.entries[r.index]
        assert r.entry is e and (r.price_in, r.price_out, r.context_window, r.max_output) == (
            e.price_in, e.price_out, e.context_window, e.max_output)
        assert (r.tools, r.vision) == ("tools" in e.capabilities, "vision" in e.capabilities)
        assert r.id == e.id and r.ok_healthy and r.ok_cooled  # no clause reads `healthy`
        assert r.prefix == () and r.suffix == r.parts[1:]  # est_cost is the first sort key


# -- per-request clauses: the interval test and the per-entry health pair agree with the clauses ---

_DYNAMIC_CLAUSES = st.one_of(
    st.builds(lambda op, n: ["cmp", "est_cost", op, n], st.sampled_from(["ge", "gt", "le", "lt"]),
              st.one_of(st.integers(0, 3), st.floats(0, 0.05, allow_nan=False))),
    st.builds(lambda v: ["eq", "healthy", v], st.booleans()),
    st.builds(lambda v: ["or", ["eq", "healthy", True], ["eq", "region", v]], st.sampled_from(["eu", "us"])),
    st.builds(lambda v: ["not", ["cmp", "est_cost", "gt", v]], st.floats(0, 0.05, allow_nan=False)),
    st.builds(lambda v: ["or", ["cmp", "latency_ms", "lt", v], ["eq", "zdr", True]], st.integers(0, 1000)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_DYNAMIC_CLAUSES, max_size=4), st.sets(st.sampled_from([e.id for e in CAT.entries]), max_size=4),
       st.integers(0, 20_000), st.one_of(st.none(), st.integers(0, 4000)))
def test_per_request_clauses_keep_exactly_the_entries_every_clause_passes(rules, cooled, prompt, max_tokens) -> None:
    from routecar.policy.evaluate import _row
    from routecar.policy.request import fit_failure

    health = FakeHealth({i: {"healthy": i not in cooled, "latency_ms": 10.0 * len(i)} for i in cooled | {"groq/gpt-oss-120b"}})
    req = RequestProfile(prompt_tokens=prompt, max_tokens=max_tokens)
    policy = P({"rules": [["cmp", "bench_intelligence", "ge", 0.2], *rules]})
    d = evaluate(policy, CAT, req, health)
    expected = {e.id for e, base in zip(CAT.entries, CAT.rows)
                if all(c.test(_row(e, base, req, health)) for c in policy.clauses) and fit_failure(e, req) is None}
    assert {r.entry.id for r in d.ranked} == expected
    assert {e.id for e, f in d.verdicts if f is None} == expected


@pytest.mark.parametrize(("op", "n", "inside", "outside"), [
    ("le", 0.5, [0.5, 0.0], [0.5000000000000001]),
    ("lt", 0.5, [0.49999999999999994], [0.5]),
    ("ge", 1, [1.0, 2.0], [0.9999999999999999]),
    ("gt", 1, [1.0000000000000002], [1.0]),
])
def test_cost_bound_is_the_clause_as_an_interval(op: str, n: float, inside: list[float], outside: list[float]) -> None:
    from routecar.policy.dynamic import cost_bound

    clause = P({"rules": [["cmp", "est_cost", op, n]]}).clauses[0]
    lo, hi = cost_bound(clause)
    for cost in inside + outside:
        assert (lo <= cost <= hi) == clause.test({"est_cost": cost}) == (cost in inside)
    assert cost_bound(P({"rules": [["cmp", "price_in", op, n]]}).clauses[0]) is None


def test_a_decision_keeps_the_health_it_was_made_with() -> None:
    """Verdicts and sort keys are computed later (in the trace writer): they must tell what the
    router saw, not the health of the moment they are computed."""
    live = {"groq/gpt-oss-120b": {"healthy": False, "latency_ms": 100.0},
            "mistral/mistral-small-3": {"healthy": True, "latency_ms": 300.0}}
    health = FakeHealth(live)
    d = evaluate(P({"rules": [["eq", "healthy", True]], "rank": [["asc", "latency_ms"]]}), CAT, SHORT, health)
    live["groq/gpt-oss-120b"] = {"healthy": True, "latency_ms": 1.0}      # it recovers...
    live["mistral/mistral-small-3"] = {"healthy": False, "latency_ms": None}  # ...another cools down
    verdicts = {e.id: f for e, f in d.verdicts}
    assert verdicts["groq/gpt-oss-120b"] is not None and verdicts["groq/gpt-oss-120b"].value is False
    assert verdicts["mistral/mistral-small-3"] is None
    assert d.ranked[0].entry.id == "mistral/mistral-small-3" and d.ranked[0].keys["latency_ms"] == 300.0
