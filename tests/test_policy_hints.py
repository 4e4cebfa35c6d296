"""Catalog warnings for valid policies: values no entry has, comparisons no entry passes."""

from __future__ import annotations

from typing import Any

import pytest

from routecar.catalog import load_catalog
from routecar.policy import parse_policy
from routecar.policy.hints import catalog_warnings

CATALOG = load_catalog()


def warnings_for(*rules: Any) -> list[tuple[str, str]]:
    policy = parse_policy({"rules": list(rules)}, CATALOG.registry)
    return [(w.path, w.message) for w in catalog_warnings(policy, CATALOG)]


@pytest.mark.parametrize("rule,expected", [
    (["eq", "region", "EU"],
     [("rules[0][2]", "no catalog entry has region 'EU' (did you mean 'eu'?); known: cn, eu, us")]),
    (["eq", "provider", "openia"],
     [("rules[0][2]", "no catalog entry has provider 'openia' (did you mean 'openai'?); known: anthropic, "
                      "azure, deepseek, google, groq, mistral, openai, scaleway")]),
    (["has", "capabilities", "tool"],
     [("rules[0][2]", "no catalog entry has capability 'tool' (did you mean 'tools'?); known: json, tools, vision")]),
    (["ne", "region", "mars"], [("rules[0][2]", "no catalog entry has region 'mars'; known: cn, eu, us")]),
    (["nin", "provider", ["openai", "deepsek"]],
     [("rules[0][2][1]", "no catalog entry has provider 'deepsek' (did you mean 'deepseek'?); known: anthropic, "
                         "azure, deepseek, google, groq, mistral, openai, scaleway")]),
    (["or", ["eq", "region", "eu"], ["not", ["eq", "tier", "Small"]]],
     [("rules[0][2][1][2]", "no catalog entry has tier 'Small' (did you mean 'small'?); known: frontier, mid, small")]),
    ({"id": "smart", "rule": ["cmp", "bench_intelligence", "ge", 50]},
     [("rules[0].rule[3]", "no catalog entry has bench_intelligence ge 50: the catalog's values range from 0.38 to 0.63")]),
    (["cmp", "price_out", "lt", 0.3],
     [("rules[0][3]", "no catalog entry has price_out lt 0.3: the catalog's values range from 0.3 to 75")]),
])
def test_suspicious_values_are_named_with_known_values(rule, expected):
    assert warnings_for(rule) == expected


def test_long_value_lists_are_cut():
    [(_, message)] = warnings_for(["eq", "id", "openai/gpt5"])
    assert message.startswith("no catalog entry has id 'openai/gpt5' (did you mean 'openai/gpt-5.5'?); known: ")
    assert message.endswith(f"... ({len(CATALOG.entries) - 12} more)")


@pytest.mark.parametrize("rule", [
    ["eq", "region", "eu"], ["in", "provider", ["openai", "mistral"]], ["has", "capabilities", "vision"],
    ["eq", "tier", "frontier"], ["cmp", "price_out", "le", 0.3], ["cmp", "bench_intelligence", "gt", 0.5],
    ["eq", "zdr", True], ["cmp", "context_window", "ge", 100000],
    ["cmp", "est_cost", "le", 1e-9], ["eq", "healthy", True], ["cmp", "latency_ms", "lt", 0],  # per request/live
])
def test_plausible_values_and_live_fields_give_no_warning(rule):
    assert warnings_for(rule) == []


def test_a_warning_never_makes_the_policy_invalid():
    policy = parse_policy({"rules": [["eq", "region", "EU"]]}, CATALOG.registry)
    assert policy.fingerprint.startswith("pol_") and catalog_warnings(policy, CATALOG)
