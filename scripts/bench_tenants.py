#!/usr/bin/env python3
"""Tenant lookups on demand (issue 16): lookup latency and sidecar memory with a big table.

Starts a throwaway PostgreSQL on loopback (tests/fakes/postgres.py; as root it runs as the
`postgres` user), fills a table of --rows tenants (default 200,000, with the recommended
indexes) and the same tenants in a SQLite file, then:

  1. lookups, in-process, the way the sidecar makes them (`await TenantLookup.get` from an
     event loop; the query runs in the lookup's thread pool): p50/p99 of cold lookups (each
     one a query: distinct ids, distinct API keys) and of cached ones (the same ids again),
     for PostgreSQL and SQLite mode=lookup;
  2. memory: the RSS of `routecar run` (reverse mode) with no tenants, with the PostgreSQL
     table, with SQLite mode=lookup and with the SQLite table held in memory (mode=table);
     idle after start, then after --touch distinct tenants were looked up through
     `POST /x/rank` (each lookup cached and its policy compiled);
  3. `routecar check --tenants …` over the whole table: wall time and peak RSS (streamed from
     PostgreSQL through a server-side cursor, vs. the SQLite table loaded whole).

Every loop is bounded by count. Prints Markdown tables.

    .venv/bin/python scripts/bench_tenants.py
    .venv/bin/python scripts/bench_tenants.py --rows 50000 --lookups 500 --touch 500
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mitmproxy.certs import CertStore  # noqa: E402

from routecar.tenants.lookup import TenantLookup  # noqa: E402
from routecar.tenants.postgres import PostgresStore  # noqa: E402
from routecar.tenants.store import SqliteStore  # noqa: E402
from routecar.tenants.table import hash_api_key, parse_source  # noqa: E402
from tests.fakes import ProxyProcess  # noqa: E402
from tests.fakes.postgres import PgServer  # noqa: E402
from tests.fakes.tenant_tables import write_pg_tenants, write_sqlite_tenants  # noqa: E402

PLANS = ("free", "pro", "enterprise", "vip")


def make_tenants(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        t: dict[str, Any] = {"id": f"t{i:07d}", "plan": PLANS[i % 4],
                             "api_key_sha256": [hash_api_key(f"key-{i}")]}
        if i % 3 == 0:
            t["region"] = "eu"
        if i % 5 == 0:
            t["approved_providers"] = ["openai", "anthropic", "azure", "mistral"]
        if i % 7 == 0:
            t["quality_floor"] = 0.5
        if i % 11 == 0:
            t["sensitive"] = True
            t["blocked_providers"] = ["deepseek"]
        out.append(t)
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def timed_lookups(lookup: TenantLookup, keys: list[tuple[str, str]]) -> list[float]:
    out = []
    for kind, value in keys:
        t0 = time.perf_counter()
        found = await (lookup.get(value) if kind == "id" else lookup.by_api_key(value))
        out.append((time.perf_counter() - t0) * 1e3)
        assert found is not None, value
    return out


def bench_lookups(name: str, store: Any, n_rows: int, n: int) -> list[str]:
    step = max(1, n_rows // n)
    ids = [("id", f"t{i:07d}") for i in range(0, n_rows, step)][:n]
    keys = [("key", f"key-{i}") for i in range(1, n_rows, step)][:n]
    lookup = TenantLookup(store, clock=time.monotonic, ttl_s=3600, max_entries=4 * n + 10)
    try:
        cold_id = asyncio.run(timed_lookups(lookup, ids))
        cold_key = asyncio.run(timed_lookups(lookup, keys))
        cached = asyncio.run(timed_lookups(lookup, ids))
    finally:
        lookup.close()
    rows = []
    for label, ms in (("cold, by id", cold_id), ("cold, by API key", cold_key), ("cached, by id", cached)):
        rows.append(f"| {name} | {label} | {len(ms)} | {statistics.median(ms):.3f} | {pct(ms, 99):.3f} "
                    f"| {max(ms):.3f} |")
    return rows


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def post_rank(port: int, tenant: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/x/rank", json.dumps({"tenant": tenant}), {"content-type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def bench_sidecar(label: str, tenants: str | None, work: Path, home: Path, n_rows: int, touch: int) -> str:
    argv = [sys.executable, "-m", "routecar.cli", "run", "--listen", "127.0.0.1:0",
            "--mode", "reverse:http://127.0.0.1:9", "--traces", "off"]
    if tenants:
        argv += ["--tenants", tenants]
    t0 = time.monotonic()
    proc = ProxyProcess.start(argv, work, env={"ROUTECAR_HOME": str(home)}, ready_timeout=600,
                              name=label.split()[0])
    started = time.monotonic() - t0
    try:
        time.sleep(1.0)  # let start-up garbage settle before the idle reading (not a readiness wait)
        idle = rss_mb(proc.pid)
        after = "-"
        if tenants:
            step = max(1, n_rows // touch)
            statuses = [post_rank(proc.port, f"t{i:07d}") for i in range(0, n_rows, step)[:touch]]
            bad = [s for s in statuses if s != 200]
            if bad:
                raise RuntimeError(f"{label}: {len(bad)} /x/rank answers were not 200 (e.g. {bad[0]})")
            after = f"{rss_mb(proc.pid):.0f}"
        return f"| {label} | {started:.1f} | {idle:.0f} | {after} |"
    finally:
        proc.stop()


_PEAK = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:], capture_output=True).returncode; "
         "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def bench_check(label: str, source: str) -> str:
    """`routecar check` in a fresh wrapper process whose only child it is: its peak RSS."""
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, "-m", "routecar.cli", "check",
                          "--tenants", source], capture_output=True, text=True, timeout=1800, cwd=ROOT)
    took = time.monotonic() - t0
    rc, peak_kb = out.stdout.split()
    return f"| {label} | {rc} | {took:.1f} | {int(peak_kb) / 1024:.0f} |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--lookups", type=int, default=2000, help="lookups per latency series")
    ap.add_argument("--touch", type=int, default=2000, help="distinct tenants looked up for 'RSS after'")
    ap.add_argument("--skip-sidecar", action="store_true")
    args = ap.parse_args()

    server = PgServer.find()
    if server is None:
        print("no PostgreSQL server binaries (see tests/fakes/postgres.py)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="routecar-bench-tenants-"))
    try:
        server.start()
        tenants = make_tenants(args.rows)
        t0 = time.monotonic()
        write_pg_tenants(server.dsn, "tenants", tenants)
        db = work / "tenants.db"
        write_sqlite_tenants(db, "tenants", tenants)
        print(f"{args.rows} tenants written to PostgreSQL {server.port} and {db} in "
              f"{time.monotonic() - t0:.1f} s; machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")
        del tenants
        pg_url = server.url("tenants")
        lite_url = f"sqlite:///{db}?table=tenants&mode=lookup"

        print("### Lookup latency (ms, in-process, awaited from an event loop)\n")
        print("| source | lookup | n | p50 | p99 | max |\n| --- | --- | --- | --- | --- | --- |")
        pg = PostgresStore(pg_url)
        for row in bench_lookups("PostgreSQL 15", pg, args.rows, args.lookups):
            print(row, flush=True)
        for row in bench_lookups("SQLite mode=lookup", SqliteStore(parse_source(lite_url)), args.rows, args.lookups):
            print(row, flush=True)

        if not args.skip_sidecar:
            home = work / "home"
            CertStore.from_store(home / "mitmproxy", "mitmproxy", 2048)
            print(f"\n### Sidecar RSS (MB), `routecar run`, {args.rows} tenants; after: {args.touch} distinct "
                  "tenants looked up via POST /x/rank\n")
            print("| tenants | start (s) | RSS idle | RSS after |\n| --- | --- | --- | --- |")
            for label, source in (("none", None), ("PostgreSQL (lookup)", pg_url),
                                  ("SQLite mode=lookup", lite_url),
                                  ("SQLite mode=table (in memory)", f"sqlite:///{db}?table=tenants")):
                print(bench_sidecar(label, source, work, home, args.rows, args.touch), flush=True)
        print(f"\n### `routecar check --tenants …` over {args.rows} tenants\n")
        print("| source | exit | wall s | peak RSS MB |\n| --- | --- | --- | --- |")
        for label, source in (("PostgreSQL (streamed)", pg_url), ("SQLite mode=lookup (streamed)", lite_url),
                              ("SQLite mode=table (loaded whole)", f"sqlite:///{db}?table=tenants")):
            print(bench_check(label, source), flush=True)
        pg.close()
    finally:
        server.destroy()
        for p in sorted(work.rglob("*"), reverse=True):
            p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
        work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
