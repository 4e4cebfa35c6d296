"""The model catalog: entries of (model, provider, region) with the fields rules use.

Validated with pydantic; errors name the entry and the field. Extra fields on
entries are allowed and become rule fields (their type inferred, see fields.py).

An entry may omit `price_in` / `price_out`: they are then taken from
genai-prices' list price for (provider, model), and `price_source` says so
(`catalog` or `genai-prices`, a rule field like any other).
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field as PField, ValidationError, field_validator

from .errors import CatalogError
from .shipped import POLICIES
from .fields import CORE_FIELDS, Field, FieldRegistry, infer_type

DEFAULT_CATALOG = POLICIES / "catalog.yaml"
MAX_CATALOG_BYTES = 16 * 1024 * 1024


class CatalogEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    id: str = PField(min_length=1)
    model: str = PField(min_length=1)
    provider: str = PField(min_length=1)
    region: str = PField(min_length=1)
    bench_intelligence: float = PField(ge=0, le=1)
    price_in: float = PField(ge=0)
    price_out: float = PField(ge=0)
    context_window: int = PField(gt=0)
    max_output: int = PField(gt=0)
    capabilities: tuple[str, ...] = ()
    zdr: bool = False
    price_source: Literal["catalog", "genai-prices"] = "catalog"

    @field_validator("capabilities", mode="before")
    @classmethod
    def _caps(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError("must be a list of strings, e.g. [tools, vision]")
        return v

    def row(self) -> dict[str, Any]:
        """The entry as a flat dict of rule fields (core + extra)."""
        return self.model_dump()


@dataclass(frozen=True)
class Catalog:
    entries: tuple[CatalogEntry, ...]
    version: str
    registry: FieldRegistry
    source: str = "<memory>"
    rows: tuple[Mapping[str, Any], ...] = field(default=(), repr=False)

    @classmethod
    def from_entries(cls, entries: Sequence[CatalogEntry], source: str = "<memory>") -> Catalog:
        rows = tuple(e.row() for e in entries)
        blob = json.dumps(rows, sort_keys=True, default=str).encode()
        version = "cat_" + hashlib.sha256(blob).hexdigest()[:12]
        return cls(tuple(entries), version, _registry_for(rows), source, rows)

    def get(self, entry_id: str) -> CatalogEntry | None:
        for e in self.entries:
            if e.id == entry_id:
                return e
        return None

    def providers(self) -> list[str]:
        return sorted({e.provider for e in self.entries})

    def to_list(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows]


def _registry_for(rows: Sequence[Mapping[str, Any]]) -> FieldRegistry:
    core = {f.name for f in CORE_FIELDS}
    extra_names = sorted({k for r in rows for k in r} - core)
    extra: list[Field] = []
    for name in extra_names:
        values = [r.get(name) for r in rows]
        t = infer_type(values)
        if t is None:
            raise CatalogError(f"catalog field {name!r} mixes value types across entries; "
                               "extra fields need one type (string, number, boolean or list of strings)")
        example = next((v for v in values if v is not None), None)
        extra.append(Field(name, t, "extra catalog field", example, "extra"))
    return FieldRegistry.build(extra)


# (provider, model) -> (price_in, price_out) USD per 1M tokens, or None if unknown.
PriceLookup = Callable[[str, str], tuple[float, float] | None]


def genai_list_price(provider: str, model: str) -> tuple[float, float] | None:
    """genai-prices' list price. Imported here, on first use: genai-prices takes ~0.4 s to
    import, which only a catalog that omits a price should pay (not `import routecar`)."""
    from .pricing import Pricer
    found = Pricer().list_price(provider, model)
    return None if found is None else (found.price_in, found.price_out)


def _fill_prices(raw: Mapping[str, Any], prices: PriceLookup, problems: list[str], label: str) -> Mapping[str, Any]:
    """`raw` with a missing price_in/price_out taken from `prices` (and price_source set)."""
    missing = [k for k in ("price_in", "price_out") if raw.get(k) is None]
    if not missing:
        return raw
    provider, model = raw.get("provider"), raw.get("model")
    found = prices(provider, model) if isinstance(provider, str) and isinstance(model, str) else None
    if found is None:
        problems.append(f"entry {label}: {' and '.join(missing)} not given and genai-prices has no price "
                        f"for {provider}/{model}: give {', '.join(missing)} (USD per 1M tokens)")
        return raw
    filled = dict(raw)
    for key, value in zip(("price_in", "price_out"), found):
        if key in missing:
            filled[key] = value
    filled["price_source"] = "genai-prices"
    return filled


def parse_catalog(data: Any, source: str = "<memory>", prices: PriceLookup = genai_list_price) -> Catalog:
    """Validate already-decoded catalog data (a list, or a mapping with `entries`)."""
    if isinstance(data, Mapping):
        data = data.get("entries")
    if not isinstance(data, list) or not data:
        raise CatalogError(f"{source}: a catalog is a non-empty list of entries (or a mapping with 'entries:')")
    entries: list[CatalogEntry] = []
    seen: set[str] = set()
    problems: list[str] = []
    for i, raw in enumerate(data):
        label = raw.get("id", f"#{i}") if isinstance(raw, Mapping) else f"#{i}"
        if isinstance(raw, Mapping):
            before = len(problems)
            raw = _fill_prices(raw, prices, problems, f"{label!s} (entries[{i}])")
            if len(problems) > before:
                continue
        try:
            entry = CatalogEntry.model_validate(raw)
        except ValidationError as e:
            for err in e.errors():
                loc = ".".join(str(p) for p in err["loc"]) or "entry"
                problems.append(f"entry {label!s} (entries[{i}]) field {loc}: {err['msg']}")
            continue
        if entry.id in seen:
            problems.append(f"entry {entry.id} (entries[{i}]): duplicate id")
        seen.add(entry.id)
        entries.append(entry)
    if problems:
        raise CatalogError(f"{source}: invalid catalog:\n  " + "\n  ".join(problems))
    return Catalog.from_entries(entries, source)


def read_source(source: str | Path, max_bytes: int = MAX_CATALOG_BYTES) -> bytes:
    """Bytes of a local file or an http(s) URL, with a clear error either way."""
    text = str(source)
    try:
        if text.startswith(("http://", "https://")):
            with urllib.request.urlopen(text, timeout=10) as resp:  # noqa: S310 - operator-given URL
                blob = resp.read(max_bytes + 1)
        else:
            blob = Path(text.removeprefix("file://")).read_bytes()
    except OSError as e:
        raise CatalogError(f"cannot read {text}: {e}") from e
    if len(blob) > max_bytes:
        raise CatalogError(f"{text}: larger than {max_bytes} bytes")
    return blob


# libyaml's safe loader when PyYAML was built with it (the wheels are): the same documents and
# errors as yaml.safe_load, ~8x faster (the shipped catalog: 35 -> 4 ms of every start).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def decode_yaml_or_json(blob: bytes, source: str) -> Any:
    try:
        return yaml.load(blob, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader; YAML is a superset of JSON
    except yaml.YAMLError as e:
        raise CatalogError(f"{source}: not valid YAML/JSON: {e}") from e


def load_catalog(source: str | Path = DEFAULT_CATALOG) -> Catalog:
    blob = read_source(source)
    return parse_catalog(decode_yaml_or_json(blob, str(source)), str(source))
