"""The field registry: which catalog fields a policy may name, with their types.

Types drive validation (which operators apply to which type is the operator
table's business: `policy/ops.py`) and the `GET /x/fields` listing. Core
fields are fixed; a catalog may add free-form extra fields, whose type is
inferred from its values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

FieldType = Literal["string", "number", "integer", "boolean", "list[string]"]

NUMERIC = ("number", "integer")

# Fields whose value depends on the request or on live health: they cannot be
# decided once per (policy, catalog) and are evaluated per request.
DYNAMIC_FIELDS = frozenset({"est_cost", "healthy", "latency_ms"})


@dataclass(frozen=True)
class Field:
    name: str
    type: FieldType
    description: str
    example: Any = None
    source: Literal["catalog", "request", "health", "extra"] = "catalog"

    def accepts(self, value: Any) -> bool:
        """True if `value` is a legal scalar for this field (list fields take strings)."""
        if self.type in NUMERIC:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.type == "boolean":
            return isinstance(value, bool)
        return isinstance(value, str)


CORE_FIELDS: tuple[Field, ...] = (
    Field("id", "string", "catalog entry id, unique (e.g. 'openai/gpt-5.5')", "openai/gpt-5.5"),
    Field("model", "string", "model name sent to the provider", "gpt-5.5"),
    Field("provider", "string", "provider name from providers.yaml", "openai"),
    Field("region", "string", "where the model is served ('eu', 'us', ...)", "eu"),
    Field("bench_intelligence", "number", "quality score in [0, 1]", 0.57),
    Field("price_in", "number", "USD per 1M input tokens", 3.0),
    Field("price_out", "number", "USD per 1M output tokens", 15.0),
    Field("price_source", "string", "where price_in/price_out come from: 'catalog' or 'genai-prices'",
          "catalog"),
    Field("context_window", "integer", "max tokens of prompt + output", 200000),
    Field("max_output", "integer", "max output tokens", 16384),
    Field("capabilities", "list[string]", "what the model supports: tools, vision, json, ...", "tools"),
    Field("zdr", "boolean", "zero data retention at the provider", True),
    Field("est_cost", "number", "estimated USD cost of this request on this entry", 0.0012, "request"),
    Field("healthy", "boolean", "false while the entry is cooled down after failures", True, "health"),
    Field("latency_ms", "number", "rolling latency of the entry (ms)", 420.0, "health"),
)


@dataclass(frozen=True)
class FieldRegistry:
    fields: Mapping[str, Field] = field(default_factory=dict)

    @classmethod
    def build(cls, extra: Iterable[Field] = ()) -> FieldRegistry:
        fields = {f.name: f for f in CORE_FIELDS}
        for f in extra:
            fields.setdefault(f.name, f)
        return cls(fields)

    def get(self, name: str) -> Field | None:
        return self.fields.get(name)

    def names(self) -> list[str]:
        return sorted(self.fields)

    @cached_property
    def key(self) -> tuple[tuple[str, str], ...]:
        """Hashable identity, for caches keyed on (policy text, registry)."""
        return tuple(sorted((n, f.type) for n, f in self.fields.items()))


def infer_type(values: Iterable[Any]) -> FieldType | None:
    """Type of an extra catalog field from its values; None when they disagree."""
    kinds: set[FieldType] = set()
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool):
            kinds.add("boolean")
        elif isinstance(v, int):
            kinds.add("integer")
        elif isinstance(v, float):
            kinds.add("number")
        elif isinstance(v, str):
            kinds.add("string")
        elif isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
            kinds.add("list[string]")
        else:
            return None
    if kinds == {"integer", "number"}:
        return "number"
    return kinds.pop() if len(kinds) == 1 else None


DEFAULT_REGISTRY = FieldRegistry.build()
