"""`routecar check` without a policy: load what `routecar run` would load, the same way, and
say what is wrong (exit 2) or OK: catalog, providers, keys, prices against genai-prices,
and every tenant."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..catalog import Catalog, load_catalog
from ..fields import FieldRegistry
from ..providers import missing_keys
from ..tenants.lookup import TenantLookup, check_store, open_tenants
from ..tenants.rules import RuleSet


def check_config(args: argparse.Namespace) -> int:
    """Load what `routecar run` would load, the same way, and say what is wrong (exit 2) or OK."""
    from ..engine import Engine, check_catalog_providers
    from ..health import HealthTracker
    from ..reloading import ReloadingSource
    providers = providers_arg(args)
    source = ReloadingSource(args.catalog, lambda s: check_catalog_providers(load_catalog(s), providers),
                             lambda: 0.0)
    engine = Engine(source, providers, os.environ, HealthTracker(lambda: 0.0), **tenant_kwargs(args))
    cat = engine.catalog
    print(f"catalog   {cat.source}: {len(cat.entries)} entries, {len(cat.providers())} providers, {cat.version}")
    print(f"providers {args.providers}: {len(providers.by_name)} (intercepting {len(providers.intercept_hosts)} hosts)")
    missing = [m.env_var for m in missing_keys(providers, cat.providers(), os.environ)]
    if missing:
        print(f"keys      not set here: {', '.join(missing)} (calls to those providers answer 500 "
              f"provider_key_missing)")
    print_price_check(cat, args.price_threshold)
    if isinstance(engine.tenants, TenantLookup):
        assert engine.rules is not None
        return _check_tenant_database(engine.tenants, engine.rules, engine.catalog.registry, args.rules)
    if engine.tenants is not None:
        table = engine.tenants.current()
        print(f"tenants   {engine.tenants.label}: {len(table.ids())} tenant(s), every one compiles "
              f"with {args.rules}")
    print("ok")
    return 0


def _check_tenant_database(lookup: TenantLookup, rules: RuleSet, registry: FieldRegistry, rules_path: str) -> int:
    """Connected (or opening the lookup would have failed); now every row, streamed, compiled once."""
    try:
        found = check_store(lookup.store, rules, registry)
    finally:
        lookup.close()
    print(f"tenants   {lookup.label}: connected, {found.tenants} tenant(s) read, looked up on demand")
    for note in found.notes:
        print(f"note      {note}")
    if found.failures:
        print(f"tenants   {found.failures} problem(s) with {rules_path}:", file=sys.stderr)
        for problem in found.problems:
            print(f"  {problem}", file=sys.stderr)
        if found.failures > len(found.problems):
            print(f"  ... and {found.failures - len(found.problems)} more", file=sys.stderr)
        return 2
    print(f"tenants   every one compiles with {rules_path}")
    print("ok")
    return 0


def print_price_check(cat: Catalog, threshold: float) -> None:
    """How many entries take genai-prices' price, and a warning per catalog price that differs."""
    from ..pricing import GENAI, Pricer, genai_version, price_drift   # genai-prices takes ~0.4 s to import
    from_genai = sum(e.price_source == GENAI for e in cat.entries)
    drift = price_drift(cat.entries, Pricer(), threshold)
    print(f"prices    genai-prices {genai_version()}: {from_genai} entr{'y' if from_genai == 1 else 'ies'} priced "
          f"from it, {len(drift)} catalog price(s) differ by more than {threshold:.0%}")
    for d in drift:
        print(f"  warning {d.describe()}")


def providers_arg(args: argparse.Namespace) -> Any:
    from ..providers import load_providers
    return load_providers(args.providers)


def tenant_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if not getattr(args, "tenants", None):
        return {}
    from ..tenants.rules import load_rules
    return {"tenants": open_tenants(args.tenants, clock=lambda: 0.0), "rules": load_rules(args.rules)}
