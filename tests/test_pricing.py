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


def _models(flat: bool) -> list[tuple[str, str]]:
    """Every (provider, model id) genai-prices resolves back to itself, with a flat or a tiered price."""
    out = []
    pricer = Pricer(clock=lambda: NOW)
    for provider in get_snapshot().providers:
        for model in provider.models:
            price = model.get_prices(NOW)
            if (_Linear.applies(price) == flat and getattr(price, "input_mtok", None) is not None
                    and pricer.known(provider.id, model.id)):
                out.append((provider.id, model.id))
    return out


FLAT, TIERED = _models(True), _models(False)
assert len(FLAT) > 100 and len(TIERED) > 20   # the sample is the price data, not a handful


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(FLAT + TIERED), st.one_of(st.integers(0, 2_000_000), st.sampled_from(
           [128_000, 128_001, 200_000, 200_001, 272_000, 272_001])), st.integers(0, 200_000),
       st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))
def test_fast_path_equals_genai_prices(pricer, ref, inp, out, cached_f, reason_f, write_f):
    """The linear shortcut gives genai-prices' own figure for every model, tiered ones included
    (inputs right at and just past common tier starts too)."""
    cached = int(inp * cached_f)
    usage = TokenUsage(inp, cached, out, int(out * reason_f), int((inp - cached) * write_f))
    fast = pricer.cost(*ref, usage)
    exact = pricer.exact_cost(*ref, usage)
    assert fast is not None and exact is not None
    assert fast.usd == pytest.approx(exact, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("ref", [("google", "gemini-2.5-pro"), ("openai", "gpt-5.5")])
def test_tier_boundaries(pricer, ref):
    """Every tier start of a tiered model, on both sides, exactly as genai-prices says."""
    price = get_snapshot().find_provider_model(ref[1], None, ref[0], None)[1].get_prices(NOW)
    assert not _Linear.applies(price)
    starts = {t.start for v in vars(price).values() if hasattr(v, "tiers") for t in v.tiers}
    for start in starts:
        for inp in (start - 1, start, start + 1):
            usage = TokenUsage(inp, inp // 3, 1000, 100)
            assert pricer.cost(*ref, usage).usd == pytest.approx(pricer.exact_cost(*ref, usage), rel=1e-9)


# -- the catalog takes missing prices from genai-prices; `check` compares the rest ------------

from routecar.catalog import CatalogError, parse_catalog  # noqa: E402
from routecar.pricing import price_drift  # noqa: E402

ENTRY = {"id": "x/1", "provider": "openai", "model": "gpt-4o", "region": "us", "bench_intelligence": 0.5,
         "context_window": 128000, "max_output": 4096}


def test_catalog_entry_without_prices_takes_genai_prices():
    cat = parse_catalog([ENTRY, {**ENTRY, "id": "x/2", "price_in": 1.0, "price_out": 2.0}])
    filled, given = cat.entries
    assert (filled.price_in, filled.price_out, filled.price_source) == (2.5, 10.0, "genai-prices")
    assert (given.price_in, given.price_out, given.price_source) == (1.0, 2.0, "catalog")
    assert cat.registry.get("price_source") is not None   # a rule field: ["eq", "price_source", "catalog"]


def test_catalog_half_given_price():
    (e,) = parse_catalog([{**ENTRY, "price_out": 99.0}]).entries
    assert (e.price_in, e.price_out, e.price_source) == (2.5, 99.0, "genai-prices")


def test_catalog_entry_without_prices_unknown_to_genai_prices_is_an_error():
    with pytest.raises(CatalogError) as e:
        parse_catalog([{**ENTRY, "model": "fake-model-for-tests"}], "cat.yaml")
    assert ("entry x/1 (entries[0]): price_in and price_out not given and genai-prices has no price for "
            "openai/fake-model-for-tests: give price_in, price_out (USD per 1M tokens)") in str(e.value)


def test_injected_price_lookup():
    (e,) = parse_catalog([ENTRY], prices=lambda provider, model: (7.0, 8.0)).entries
    assert (e.price_in, e.price_out) == (7.0, 8.0)


def test_price_drift(pricer):
    cat = parse_catalog([{**ENTRY, "id": "close", "price_in": 2.6, "price_out": 10.0},
                         {**ENTRY, "id": "far", "price_in": 5.0, "price_out": 10.0},
                         {**ENTRY, "id": "fake", "model": "fake-model-for-tests", "price_in": 1, "price_out": 1},
                         {**ENTRY, "id": "from-genai"}])
    drift = price_drift(cat.entries, pricer, threshold=0.2)
    assert [(d.entry, d.field) for d in drift] == [("far", "price_in")]
    assert drift[0].describe() == "far: price_in 5 in the catalog, 2.5 in genai-prices (-50%)"
    assert [d.entry for d in price_drift(cat.entries, pricer, threshold=0.01)] == ["close", "far"]


def test_check_warns_about_price_drift(tmp_path, capsys):
    import yaml

    from routecar.cli.main import main

    cat = tmp_path / "catalog.yaml"
    cat.write_text(yaml.safe_dump({"entries": [
        {**ENTRY, "id": "openai/far", "price_in": 5.0, "price_out": 10.0},
        {**ENTRY, "id": "openai/genai"},
        {**ENTRY, "id": "openai/fake", "model": "fake-model-for-tests", "price_in": 1.0, "price_out": 1.0}]}))
    assert main(["check", "--catalog", str(cat)]) == 0
    out = capsys.readouterr().out
    assert "1 entry priced from it, 1 catalog price(s) differ by more than 20%" in out
    assert "  warning openai/far: price_in 5 in the catalog, 2.5 in genai-prices (-50%)" in out
    assert main(["check", "--catalog", str(cat), "--price-threshold", "0.6"]) == 0
    assert "0 catalog price(s) differ by more than 60%" in capsys.readouterr().out
