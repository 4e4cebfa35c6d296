"""Actual cost: genai-prices for the models it knows, the catalog price otherwise."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price
from genai_prices.data_snapshot import get_snapshot
from hypothesis import given, settings, strategies as st

from routecar.pricing import CATALOG, GENAI, Pricer, _Linear, list_cost
from routecar.usage import TokenUsage

NOW = datetime(2026, 1, 15, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer(clock=lambda: NOW)


def test_known_model_is_priced_by_genai_prices(pricer):
    usage = TokenUsage(input=1000, cached_input=200, output=100)
    cost = pricer.cost("openai", "gpt-4o", usage, fallback=(999.0, 999.0))
    expected = calc_price(Usage(input_tokens=1000, cache_read_tokens=200, output_tokens=100), "gpt-4o",
                          provider_id="openai", genai_request_timestamp=NOW).total_price
    assert cost is not None and cost.source == GENAI
    assert Decimal(str(cost.usd)).quantize(Decimal("1e-12")) == expected.quantize(Decimal("1e-12"))


def test_cached_input_is_cheaper_than_fresh_input(pricer):
    fresh = pricer.cost("openai", "gpt-4o", TokenUsage(input=10_000, output=0))
    cached = pricer.cost("openai", "gpt-4o", TokenUsage(input=10_000, cached_input=10_000, output=0))
    assert fresh and cached and cached.usd < fresh.usd


def test_unknown_model_falls_back_to_the_catalog_price(pricer):
    cost = pricer.cost("openai", "fake-model-for-tests", TokenUsage(input=2_000_000, output=1_000_000),
                       fallback=(0.5, 2.0))
    assert cost is not None and cost.source == CATALOG and cost.usd == pytest.approx(3.0)


def test_unknown_provider_falls_back_too(pricer):
    cost = pricer.cost("scaleway-private", "gpt-4o", TokenUsage(input=1_000_000), fallback=(1.0, 1.0))
    assert cost is not None and (cost.source, cost.usd) == (CATALOG, 1.0)


def test_nothing_to_price_with(pricer):
    assert pricer.cost("nobody", "nothing", TokenUsage(input=10)) is None


def test_list_price_and_source_model(pricer):
    lp = pricer.list_price("openai", "gpt-4o")
    assert lp is not None and (lp.price_in, lp.price_out, lp.provider_id) == (2.5, 10.0, "openai")
    assert pricer.list_price("openai", "fake-model-for-tests") is None


def test_aliases_map_provider_names(pricer):
    aliased = Pricer(clock=lambda: NOW, aliases={"my-gateway": "anthropic"})
    assert aliased.list_price("my-gateway", "claude-sonnet-4-6") == pricer.list_price("anthropic", "claude-sonnet-4-6")


def test_list_cost_formula():
    assert list_cost(2.0, 8.0, 500_000, 250_000) == pytest.approx(3.0)


def _flat_models() -> list[tuple[str, str]]:
    """Every (provider, model id) genai-prices resolves back to itself, with a flat token price."""
    out = []
    pricer = Pricer(clock=lambda: NOW)
    for provider in get_snapshot().providers:
        for model in provider.models:
            price = model.get_prices(NOW)
            if (_Linear.applies(price) and getattr(price, "input_mtok", None) is not None
                    and pricer.known(provider.id, model.id)):
                out.append((provider.id, model.id))
    return out


FLAT = _flat_models()
assert len(FLAT) > 100   # the sample is the price data, not a handful
TIERED = [("google", "gemini-2.5-pro"), ("anthropic", "claude-sonnet-4-5")]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FLAT + TIERED), st.integers(0, 2_000_000), st.integers(0, 200_000),
       st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))
def test_fast_path_equals_genai_prices(pricer, ref, inp, out, cached_f, reason_f, write_f):
    """The linear shortcut gives genai-prices' own figure for every flat-priced model."""
    cached = int(inp * cached_f)
    usage = TokenUsage(inp, cached, out, int(out * reason_f), int((inp - cached) * write_f))
    fast = pricer.cost(*ref, usage)
    exact = pricer.exact_cost(*ref, usage)
    assert fast is not None and exact is not None
    assert fast.usd == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_tiered_models_exist_in_the_sample():
    for ref in TIERED:
        price = get_snapshot().find_provider_model(ref[1], None, ref[0], None)[1].get_prices(NOW)
        assert not _Linear.applies(price), ref
