#!/usr/bin/env python3
"""Decision-time benchmark: policy lookup/parse + evaluate on synthetic catalogs.

    .venv/bin/python scripts/bench_decision.py [--budget-s 40]

Prints a Markdown table of p50/p99 decision time (µs) for catalogs of 20, 200
and 2000 entries x {1-clause, 20-clause} policies x {cached: PolicyCache hit +
evaluate, uncached: parse + evaluate}. The target (issue 2) is <= 50 µs p50
cached at 200 entries. Runtime is bounded by --budget-s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    import routecar  # noqa: F401  (installed distribution)
except ImportError:  # running from a checkout without the package installed
    import importlib.util
    spec = importlib.util.spec_from_file_location("routecar", Path(__file__).resolve().parent.parent / "addon" / "__init__.py",
                                                  submodule_search_locations=[str(Path(__file__).resolve().parent.parent / "addon")])
    assert spec and spec.loader
    sys.modules["routecar"] = mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

from routecar.catalog import Catalog, CatalogEntry
from routecar.policy import PolicyCache, RequestProfile, evaluate, parse_policy

PROVIDERS = ["openai", "anthropic", "google", "mistral", "azure", "groq", "deepseek", "scaleway"]
REGIONS = ["us", "eu", "cn"]
CAPS = [["tools"], ["tools", "json"], ["tools", "vision", "json"], ["tools", "vision"]]

SIMPLE = {"rules": [["cmp", "bench_intelligence", "ge", 0.5]]}
TWENTY = {"rules": [
    ["cmp", "bench_intelligence", "ge", 0.3],
    ["cmp", "bench_intelligence", "le", 0.99],
    ["cmp", "price_in", "le", 50],
    ["cmp", "price_out", "le", 100],
    ["cmp", "context_window", "ge", 8000],
    ["cmp", "max_output", "ge", 1000],
    ["nin", "provider", ["deepseek"]],
    ["in", "region", ["eu", "us"]],
    ["has", "capabilities", "tools"],
    ["ne", "model", "banned-model"],
    ["not", ["eq", "id", "openai/m-0"]],
    ["or", ["eq", "zdr", True], ["eq", "region", "us"]],
    ["in", "tier", ["small", "mid", "frontier"]],
    ["cmp", "score", "ge", 0],
    ["or", ["has", "capabilities", "json"], ["has", "capabilities", "vision"]],
    ["and", ["cmp", "price_in", "ge", 0], ["cmp", "price_out", "ge", 0]],
    ["nin", "model", ["x", "y", "z"]],
    ["cmp", "est_cost", "le", 1.0],
    ["eq", "healthy", True],
    ["not", ["in", "provider", ["nobody"]]],
]}


def synthetic_catalog(n: int, seed: int = 7) -> Catalog:
    rnd = random.Random(seed)
    entries = []
    for i in range(n):
        p = PROVIDERS[i % len(PROVIDERS)]
        entries.append(CatalogEntry.model_validate({
            "id": f"{p}/m-{i}", "model": f"m-{i}", "provider": p, "region": rnd.choice(REGIONS),
            "bench_intelligence": round(rnd.uniform(0.3, 0.7), 3), "price_in": round(rnd.uniform(0.05, 15), 2),
            "price_out": round(rnd.uniform(0.1, 75), 2), "context_window": rnd.choice([32000, 128000, 200000, 1000000]),
            "max_output": rnd.choice([4096, 8192, 16384, 32768]), "capabilities": rnd.choice(CAPS),
            "zdr": rnd.random() < 0.5, "tier": rnd.choice(["small", "mid", "frontier"]), "score": rnd.randint(0, 100),
        }))
    return Catalog.from_entries(entries)


def measure(fn, budget_s: float, max_n: int = 20_000) -> tuple[float, float, float, int]:
    """(p50 µs, p99 µs, CPU p50 µs, samples) of fn(), after a short warm-up, within budget_s.

    Wall time suffers when other processes share the CPU; the thread's CPU time (one
    clock_gettime per sample, ~0.5 µs included) does not, so on a busy machine it is the
    figure to compare."""
    for _ in range(20):
        fn()
    samples: list[float] = []
    cpu: list[float] = []
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    end = time.perf_counter() + budget_s
    while len(samples) < max_n and (len(samples) < 200 or time.perf_counter() < end):
        c0 = cpu_clock()
        t0 = clock()
        fn()
        samples.append((clock() - t0) / 1000)
        cpu.append((cpu_clock() - c0) / 1000)
    qs = statistics.quantiles(samples, n=100, method="inclusive")
    return statistics.median(samples), qs[98], statistics.median(cpu), len(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-s", type=float, default=40.0, help="total time budget in seconds (default 40)")
    ap.add_argument("--sizes", default="20,200,2000", help="catalog sizes, comma-separated")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cells = len(sizes) * 2 * 2
    per_cell = args.budget_s / cells
    req = RequestProfile.from_body({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello, how are you?"}]})

    rows = []
    for n in sizes:
        cat = synthetic_catalog(n)
        for pname, pol in (("1 clause", SIMPLE), ("20 clauses", TWENTY)):
            text = json.dumps(pol)
            parse_policy(text, cat.registry)  # fails fast if the synthetic policy is invalid
            cache = PolicyCache(cat.registry)
            survivors = len(evaluate(cache.parse(text), cat, req).ranked)

            def cached() -> None:
                evaluate(cache.parse(text), cat, req).selected

            def uncached() -> None:
                evaluate(parse_policy(text, cat.registry), cat, req).selected

            for mode, fn in (("cached", cached), ("uncached", uncached)):
                p50, p99, cpu50, k = measure(fn, per_cell)
                rows.append((n, pname, mode, survivors, p50, p99, cpu50, k))

    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"Decision time (policy lookup/parse + evaluate + select), Python {sys.version.split()[0]}, "
          f"load average {load}\n")
    print("| entries | policy | mode | survivors | p50 µs | p99 µs | CPU p50 µs | samples |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for n, pname, mode, surv, p50, p99, cpu50, k in rows:
        print(f"| {n} | {pname} | {mode} | {surv} | {p50:.1f} | {p99:.1f} | {cpu50:.1f} | {k} |")
    target = [r for r in rows if r[0] == 200 and r[2] == "cached"]
    if target:
        worst, worst_cpu = max(r[4] for r in target), max(r[6] for r in target)
        verdict = "met" if min(worst, worst_cpu) <= 50 else "MISSED"
        print(f"\nTarget p50 <= 50 µs cached at 200 entries: {verdict} (worst {worst:.1f} µs wall, "
              f"{worst_cpu:.1f} µs CPU)")
        twenty = [r for r in target if r[1] == "20 clauses"]
        if twenty:  # issue 15: the 20-clause policy, with its per-request clauses (est_cost, healthy)
            wall, cpu = twenty[0][4], twenty[0][6]
            print(f"Issue 15 target, 20-clause policy with per-request clauses, p50 <= 50 µs cached at 200 entries: "
                  f"{'met' if min(wall, cpu) <= 50 else 'MISSED'} ({wall:.1f} µs wall, {cpu:.1f} µs CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
