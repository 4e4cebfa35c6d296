"""Catalog: loading, errors naming entry and field, extra fields, reload keeping the last good version."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from routecar.catalog import DEFAULT_CATALOG, load_catalog, parse_catalog
from routecar.errors import CatalogError
from routecar.reloading import ReloadingSource


def entry(id: str, **kw: Any) -> dict[str, Any]:
    base = {"id": id, "model": "m", "provider": "p", "region": "us", "bench_intelligence": 0.5,
            "price_in": 1.0, "price_out": 2.0, "context_window": 1000, "max_output": 100}
    return {**base, **kw}


def test_load_default() -> None:
    cat = load_catalog()
    assert len(cat.entries) == 19 and cat.source == str(DEFAULT_CATALOG)
    assert cat.version.startswith("cat_") and len(cat.version) == 16
    assert cat.version == load_catalog().version
    assert cat.get("openai/gpt-5.5").price_in == 5.0 and cat.get("nope") is None
    assert "mistral" in cat.providers()
    tier = cat.registry.get("tier")
    assert tier is not None and (tier.type, tier.source) == ("string", "extra")
    assert cat.to_list()[0]["id"] == "openai/gpt-5.5"


@pytest.mark.parametrize(("data", "message"), [
    ([entry("a/b", price_in="cheap")], "entry a/b (entries[0]) field price_in: Input should be a valid number"),
    ([{k: v for k, v in entry("a/b").items() if k != "region"}], "entry a/b (entries[0]) field region: Field required"),
    ([entry("a/b"), entry("a/b")], "entry a/b (entries[1]): duplicate id"),
    ([entry("a/b", price_out=-1)], "entry a/b (entries[0]) field price_out: Input should be greater than or equal to 0"),
    ([entry("a/b", bench_intelligence=1.5)], "field bench_intelligence: Input should be less than or equal to 1"),
    ([entry("a/b", capabilities="tools")], "field capabilities: Value error, must be a list of strings"),
    (["x"], "entry #0 (entries[0]) field entry: Input should be a valid dictionary"),
    ([], "a catalog is a non-empty list of entries"),
    ({"entries": None}, "a catalog is a non-empty list of entries"),
    ([entry("a/b", tier="x"), entry("c/d", tier=3)], "catalog field 'tier' mixes value types across entries"),
    ([entry("a/b", meta={"k": 1})], "catalog field 'meta' mixes value types"),
])
def test_errors_name_entry_and_field(data: Any, message: str) -> None:
    with pytest.raises(CatalogError) as ei:
        parse_catalog(data, "cat.yaml")
    assert message in str(ei.value)


def test_every_problem_is_listed() -> None:
    with pytest.raises(CatalogError) as ei:
        parse_catalog([entry("a", price_in=-1), entry("b", context_window=0), entry("b")], "c.yaml")
    text = str(ei.value)
    assert text.startswith("c.yaml: invalid catalog:")
    assert "entry a (entries[0]) field price_in" in text and "entry b (entries[1]) field context_window" in text


def test_extra_fields_become_typed_registry_fields() -> None:
    cat = parse_catalog([entry("a", tier="gold", score=3, ratio=0.5, eu=True, tags=["x"], mixed=1),
                         entry("b", score=4, ratio=1, mixed=2.5)])
    types = {n: cat.registry.get(n).type for n in ("tier", "score", "ratio", "eu", "tags", "mixed")}
    assert types == {"tier": "string", "score": "integer", "ratio": "number", "eu": "boolean",
                     "tags": "list[string]", "mixed": "number"}
    assert cat.registry.get("tier").example == "gold"
    assert cat.registry.get("price_in").source == "catalog"


def test_yaml_and_json_files(tmp_path: Path) -> None:
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"entries": [entry("a")]}))
    y = tmp_path / "c.yaml"
    y.write_text("- {id: a, model: m, provider: p, region: us, bench_intelligence: 0.5,\n"
                 "   price_in: 1.0, price_out: 2.0, context_window: 1000, max_output: 100}\n")
    assert load_catalog(j).version == load_catalog(y).version
    (tmp_path / "bad.yaml").write_text("entries: [ {")
    with pytest.raises(CatalogError, match="not valid YAML/JSON"):
        load_catalog(tmp_path / "bad.yaml")
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.yaml")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_reloading_source(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps([entry("a")]))
    clock = Clock()
    src = ReloadingSource(str(path), load_catalog, clock, ttl_s=2.0)
    first = src.current()
    assert [e.id for e in first.entries] == ["a"]
    path.write_text(json.dumps([entry("a"), entry("bb")]))
    clock.t = 1.0
    assert src.current() is first  # within the TTL: not re-checked
    clock.t = 2.5
    second = src.current()
    assert [e.id for e in second.entries] == ["a", "bb"] and src.reloads == 1 and src.last_error is None
    path.write_text(json.dumps([entry("a", price_in=-5), entry("ccc")]))  # broken new version
    clock.t = 5.0
    assert src.current() is second
    assert src.last_error is not None and "price_in" in src.last_error and "keeping the last good version" in src.last_error
    clock.t = 8.0
    assert src.current() is second and src.reloads == 1  # the same broken file is not retried
    path.write_text(json.dumps([entry("dddd")]))  # fixed
    clock.t = 11.0
    assert [e.id for e in src.current().entries] == ["dddd"] and src.last_error is None and src.reloads == 2
    assert src.refresh(force=True) and src.reloads == 3


def test_reloading_source_first_load_must_succeed(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("[]")
    with pytest.raises(CatalogError):
        ReloadingSource(str(path), load_catalog, Clock())


def test_background_reload_never_blocks_current(tmp_path) -> None:
    import threading

    path = tmp_path / "v.txt"
    path.write_text("one")
    gate, loads = threading.Event(), []

    def load(src: str) -> str:
        if loads:  # every reload after the first waits for the gate: a slow URL, a big table
            assert gate.wait(10)
        loads.append(src)
        return Path(src).read_text()

    now = [0.0]
    source = ReloadingSource(str(path), load, lambda: now[0], ttl_s=1.0, background=True)
    path.write_text("two!")
    now[0] = 5.0
    assert source.current() == "one"   # the reload is running, the old value serves meanwhile
    assert source.current() == "one"
    gate.set()
    deadline = time.monotonic() + 10
    while source.current() != "two!":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert source.reloads == 1 and len(loads) == 2
