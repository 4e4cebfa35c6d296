"""The actual cost of a routed call: the provider's reported usage priced with genai-prices.

    Pricer.cost(provider, model, usage, fallback)  -> Cost(usd, source)
    Pricer.list_price(provider, model)             -> ListPrice | None   (USD per 1M tokens)

Prices come from genai-prices' bundled snapshot (Pydantic's maintained price
data): offline and never auto-updated (upgrade the package for newer prices). A model genai-prices does not
know (a private deployment, a test's fake model) is priced at its catalog entry's
`price_in` / `price_out` (`source="catalog"`).

genai-prices' general calculation costs ~130 µs a call (unit registry, usage
inference, validation). A price that is flat per token is linear in the token
counts, so the Pricer asks genai-prices once per model price for the cost of one
million tokens of each kind and multiplies afterwards (`_Linear`, ~5 µs); a
tiered price (the rate depends on the prompt size) is linear between its tier
starts (`_Piecewise`). `tests/test_pricing.py` checks the figures equal
genai-prices' own calculation for every model it prices.
"""

from __future__ import annotations

import importlib.metadata
import threading
from bisect import bisect_left
from copy import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from genai_prices import Usage as GenaiUsage
from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import ModelInfo, ModelPrice, Provider as GenaiProvider, TieredPrices

from .usage import TokenUsage

GENAI = "genai-prices"
CATALOG = "catalog"
_M = 1_000_000


@dataclass(frozen=True, slots=True)
class Cost:
    usd: float
    source: str   # GENAI or CATALOG


@dataclass(frozen=True, slots=True)
class ListPrice:
    """genai-prices' list price of a model, USD per 1M tokens (a tiered price: its base rate)."""

    price_in: float
    price_out: float
    model_id: str      # genai-prices' id of the model that matched
    provider_id: str


def genai_version() -> str:
    """The installed genai-prices release: its price data is bundled with it."""
    return importlib.metadata.version("genai-prices")


def list_cost(price_in: float, price_out: float, input_tokens: int, output_tokens: int) -> float:
    """USD for tokens at per-1M-token list prices (a catalog entry's; cached input at the full rate)."""
    return (input_tokens * price_in + output_tokens * price_out) / _M


def _genai_usage(u: TokenUsage) -> GenaiUsage:
    return GenaiUsage(input_tokens=u.input, cache_read_tokens=u.cached_input, cache_write_tokens=u.cache_write,
                      output_tokens=u.output, output_reasoning_tokens=u.reasoning)


def _base(price: Any) -> float | None:
    if isinstance(price, TieredPrices):
        return float(price.base)
    return float(price) if isinstance(price, Decimal) else None


class _Linear:
    """A flat per-token price as coefficients: USD per request and per token of each kind."""

    __slots__ = ("request", "input", "cached", "write", "output", "reasoning")

    def __init__(self, price: ModelPrice) -> None:
        def per_token(**tokens: int) -> float:
            return float(price.calc_price(GenaiUsage(**tokens))["total_price"])

        self.request = per_token()
        self.input = (per_token(input_tokens=_M) - self.request) / _M
        self.cached = (per_token(input_tokens=_M, cache_read_tokens=_M) - self.request) / _M
        self.write = (per_token(input_tokens=_M, cache_write_tokens=_M) - self.request) / _M
        self.output = (per_token(output_tokens=_M) - self.request) / _M
        self.reasoning = (per_token(output_tokens=_M, output_reasoning_tokens=_M) - self.request) / _M

    @staticmethod
    def applies(price: ModelPrice) -> bool:
        return not any(isinstance(v, TieredPrices) for v in vars(price).values())

    def cost(self, u: TokenUsage) -> float:
        plain_in = u.input - u.cached_input - u.cache_write
        return (self.request + plain_in * self.input + u.cached_input * self.cached + u.cache_write * self.write
                + (u.output - u.reasoning) * self.output + u.reasoning * self.reasoning)


def _at(price: ModelPrice, input_tokens: int) -> ModelPrice:
    """`price` with every tiered rate fixed at the one that applies to `input_tokens` total input
    tokens (genai-prices' "cliff" tiers: above a tier's start, every token pays its rate)."""
    flat = copy(price)
    for key, value in vars(price).items():
        if isinstance(value, TieredPrices):
            rate = value.base
            for tier in reversed(value.tiers):
                if input_tokens > tier.start:
                    rate = tier.price
                    break
            flat.__dict__[key] = rate
    return flat


class _Piecewise:
    """A tiered price: one `_Linear` per span of total input tokens between tier starts."""

    __slots__ = ("starts", "spans")

    def __init__(self, price: ModelPrice) -> None:
        self.starts = sorted({t.start for v in vars(price).values() if isinstance(v, TieredPrices) for t in v.tiers})
        self.spans = [_Linear(_at(price, at)) for at in (0, *(s + 1 for s in self.starts))]

    def cost(self, u: TokenUsage) -> float:
        return self.spans[bisect_left(self.starts, u.input)].cost(u)   # the tiers whose start is below the input


class Pricer:
    """Prices calls. Thread-safe; lookups are cached per (provider, model).

    `clock` gives the request time (genai-prices has dated prices); `aliases` maps a
    routecar provider name to genai-prices' provider id where they differ.
    """

    def __init__(self, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 aliases: dict[str, str] | None = None) -> None:
        self.clock = clock
        self.aliases = dict(aliases or {})
        self._refs: dict[tuple[str, str], tuple[GenaiProvider, ModelInfo] | None] = {}
        self._linear: dict[int, tuple[ModelPrice, _Linear | _Piecewise]] = {}
        self._lock = threading.Lock()

    def _ref(self, provider: str, model: str) -> tuple[GenaiProvider, ModelInfo] | None:
        key = (provider, model)
        try:
            return self._refs[key]
        except KeyError:
            pass
        try:
            ref = get_snapshot().find_provider_model(model, None, self.aliases.get(provider, provider), None)
        except LookupError:
            ref = None   # unknown provider or model: the catalog price applies
        with self._lock:
            if len(self._refs) > 4096:   # bounded: model names come from providers' answers too
                self._refs.clear()
            self._refs[key] = ref
        return ref

    def known(self, provider: str, model: str) -> bool:
        return self._ref(provider, model) is not None

    def list_price(self, provider: str, model: str) -> ListPrice | None:
        ref = self._ref(provider, model)
        if ref is None:
            return None
        price = ref[1].get_prices(self.clock())
        p_in, p_out = _base(getattr(price, "input_mtok", None)), _base(getattr(price, "output_mtok", None))
        if p_in is None or p_out is None:
            return None
        return ListPrice(p_in, p_out, ref[1].id, ref[0].id)

    def cost(self, provider: str, model: str, usage: TokenUsage,
             fallback: tuple[float, float] | None = None) -> Cost | None:
        """USD for `usage` on (provider, model); `fallback` = the catalog's (price_in, price_out)
        when genai-prices does not know the model. None when neither can price it."""
        ref = self._ref(provider, model)
        if ref is not None:
            try:
                return Cost(self._genai_cost(ref, usage), GENAI)
            except (ValueError, ArithmeticError, LookupError):
                pass   # a price genai-prices cannot apply to this usage: say what the catalog says
        if fallback is None:
            return None
        return Cost(list_cost(fallback[0], fallback[1], usage.input, usage.output), CATALOG)

    def _genai_cost(self, ref: tuple[GenaiProvider, ModelInfo], usage: TokenUsage) -> float:
        model = ref[1]
        when = self.clock()
        price = model.get_prices(when)
        hit = self._linear.get(id(price))
        if hit is None or hit[0] is not price:
            with self._lock:
                self._linear[id(price)] = hit = (price, _Linear(price) if _Linear.applies(price) else _Piecewise(price))
        return hit[1].cost(usage)

    def exact_cost(self, provider: str, model: str, usage: TokenUsage) -> float | None:
        """genai-prices' own calculation, without the linear shortcut (for checks and tests)."""
        ref = self._ref(provider, model)
        if ref is None:
            return None
        calc = ref[1].calc_price(_genai_usage(usage), ref[0], genai_request_timestamp=self.clock())
        return float(calc.total_price)



class PricedEntry(Protocol):
    """What `price_drift` reads of a catalog entry (read-only)."""

    @property
    def id(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def price_in(self) -> float: ...
    @property
    def price_out(self) -> float: ...
    @property
    def price_source(self) -> str: ...


@dataclass(frozen=True, slots=True)
class PriceDrift:
    entry: str
    field: str          # "price_in" or "price_out"
    catalog: float
    genai: float

    @property
    def change(self) -> float:
        """genai-prices relative to the catalog (+1.0: genai-prices says twice the catalog's price)."""
        return self.genai / self.catalog - 1 if self.catalog else float("inf")

    def describe(self) -> str:
        return (f"{self.entry}: {self.field} {self.catalog:g} in the catalog, {self.genai:g} in genai-prices "
                f"({self.change:+.0%})")


def price_drift(entries: Sequence[PricedEntry], pricer: Pricer, threshold: float) -> list[PriceDrift]:
    """Catalog prices that differ from genai-prices' list price by more than `threshold`
    (0.2 = 20 %, relative to the larger of the two). Entries priced from genai-prices are skipped."""
    out = []
    for e in entries:
        if e.price_source != CATALOG:
            continue
        listed = pricer.list_price(e.provider, e.model)
        if listed is None:
            continue
        for field, ours, theirs in (("price_in", e.price_in, listed.price_in),
                                    ("price_out", e.price_out, listed.price_out)):
            if abs(ours - theirs) > threshold * max(ours, theirs):
                out.append(PriceDrift(e.id, field, ours, theirs))
    return out
