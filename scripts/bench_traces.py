#!/usr/bin/env python3
"""Trace writer: throughput, store bytes per call, and what it does to an event loop.

    .venv/bin/python scripts/bench_traces.py [--records 5000] [--cap 60]

Each record is what the addon writes for one routed request on the shipped
catalog: the decision (every catalog entry's verdict, the ranking), one
attempt, usage, and a small payload (or none with no_log). Prompt sizes vary
from record to record, as they do in traffic. Three tables, bounded by count
and time:

1. throughput: records/s from `submit()` to committed rows, and the writer's CPU per record;
2. store bytes per routed call, payloads excluded (SQLite's `dbstat`: pages of
   every table and index but `payloads`, divided by the calls written);
3. event-loop stall: an asyncio loop wakes every 1 ms and hands the writer a
   record at a steady rate (as the proxy does); its lateness p50/p99/max is
   what the writer thread's GIL time adds to a request on the same core
   (`--rate`, default 700 records/s, about `routecar run` at concurrency 1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from routecar.catalog import load_catalog  # noqa: E402
from routecar.health import HealthTracker  # noqa: E402
from routecar.policy import RequestProfile, evaluate, parse_policy  # noqa: E402
from routecar.traces.record import TraceRecord  # noqa: E402
from routecar.traces.store import TraceStore  # noqa: E402
from routecar.traces.writer import TraceWriter  # noqa: E402

WORDS = "summarise our churn in three bullets for the board with numbers and a chart".split()


def records(n: int, no_log: bool, seed: int = 1, start: int = 0) -> list[TraceRecord]:
    cat = load_catalog()
    health = HealthTracker(time.monotonic)  # the sidecar always evaluates with live health
    pol = parse_policy({"rules": [["cmp", "bench_intelligence", "ge", 0.5]], "no_log": no_log}, cat.registry)
    rnd = random.Random(seed)
    out = []
    for i in range(start, start + n):
        text = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(3, 400)))
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
        d = evaluate(pol, cat, RequestProfile.from_body(body), health)
        sel = d.entries[0]
        out.append(TraceRecord(
            trace_id=f"rt_{int(time.time() * 1000):x}{i:08x}", ts=time.time(), tenant="acme-free",
            mode="regular", no_log=no_log, status=200, outcome="ok", latency_ms=round(rnd.uniform(1, 900), 2),
            ttfb_ms=round(rnd.uniform(1, 400), 2),
            usage={"prompt_tokens": d.request.prompt_tokens, "completion_tokens": rnd.randint(1, 256),
                   "total_tokens": d.request.prompt_tokens + 9},
            actual_cost=round(rnd.uniform(0, 0.01), 8),
            decision=d,
            attempts=[{"entry": sel.id, "provider": sel.provider, "model": sel.model, "status": 200,
                       "error_class": "ok", "duration_ms": round(rnd.uniform(1, 900), 2)}],
            request_body=None if no_log else str(body), response_body=None if no_log else '{"id": "x"}',
            fingerprint=pol.fingerprint, digest=pol.digest, requested_model="gpt-4o",
            catalog=cat.to_list() if i == 0 else None))
    return out


def throughput(recs: list[TraceRecord], cap: float) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, records written): the main thread only
    waits, so the CPU time is the writer's, whatever else the machine runs."""
    with tempfile.TemporaryDirectory() as tmp:
        w = TraceWriter(Path(tmp) / "traces.db", max_queue=len(recs) + 1).start()
        t0, cpu0 = time.perf_counter(), time.process_time()
        for r in recs:
            w.submit(r)
        w.flush(timeout=cap)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        written = w.stats()["written"]
        w.close()
    return elapsed, cpu, written


def store_bytes(recs: list[TraceRecord]) -> dict[str, float]:
    """Bytes on disk per call by table (its indexes included), from SQLite's dbstat."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "traces.db"
        with TraceStore(path) as store:
            for i in range(0, len(recs), 50):
                store.write(recs[i:i + 50])
        with sqlite3.connect(path) as db:
            owner = dict(db.execute("SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')"))
            sizes: dict[str, float] = {}
            for name, pgsize in db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
                table = owner.get(name, name)
                sizes[table] = sizes.get(table, 0) + pgsize / len(recs)
    return sizes


def loop_stall(recs: list[TraceRecord], rate: float, seconds: float, traced: bool) -> tuple[list[float], int]:
    """(lateness of every tick in ms, records submitted) of a 1 ms asyncio tick while a
    TraceWriter (or none) takes records at `rate`/s."""
    async def main(writer: TraceWriter | None) -> tuple[list[float], int]:
        late: list[float] = []
        sent, t_start = 0, time.perf_counter()
        end = t_start + seconds
        while (now := time.perf_counter()) < end and sent < len(recs):
            t0 = now
            await asyncio.sleep(0.001)
            late.append((time.perf_counter() - t0 - 0.001) * 1000)
            due = int((time.perf_counter() - t_start) * rate)
            while sent < due and sent < len(recs):
                if writer is not None:
                    writer.submit(recs[sent])
                sent += 1
        return late, sent

    with tempfile.TemporaryDirectory() as tmp:
        writer = TraceWriter(Path(tmp) / "traces.db", max_queue=len(recs) + 1).start() if traced else None
        late, sent = asyncio.run(main(writer))
        if writer is not None:
            writer.close()
    return late, sent


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak(total: int, cap: float) -> list[tuple[int, float, int]]:
    """(records submitted, RSS MB, records written) at every fifth of `total` records handed to one
    TraceWriter, made 2000 at a time (prompt sizes vary: the writer meets new decisions all along)."""
    points = [(0, rss_mb(), 0)]
    deadline = time.monotonic() + cap
    with tempfile.TemporaryDirectory() as tmp:
        w = TraceWriter(Path(tmp) / "traces.db").start()
        done = 0
        while done < total and time.monotonic() < deadline:
            for r in records(min(2000, total - done), False, seed=done, start=done):
                while not w.submit(r):  # a full queue: wait for the writer (never drop here)
                    w.flush(timeout=1)
            done += min(2000, total - done)
            if done % max(1, total // 5) < 2000 or done >= total:
                w.flush(timeout=cap)
                points.append((done, rss_mb(), w.stats()["written"]))
        w.close()
    return points


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=5000)
    p.add_argument("--cap", type=float, default=60.0, help="seconds per run at most")
    p.add_argument("--rate", type=float, default=700.0, help="records/s for the event-loop stall run")
    p.add_argument("--stall-seconds", type=float, default=4.0, help="per round (default 4)")
    p.add_argument("--soak", type=int, default=50_000, help="records for the memory run (0: skip)")
    p.add_argument("--stall-rounds", type=int, default=3,
                   help="rounds, with and without the writer alternating (default 3)")
    args = p.parse_args()
    n_entries = len(load_catalog().entries)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"Trace writer, {args.records} records per run, shipped catalog ({n_entries} entries); "
          f"load average {load}\n")
    print("| payload | records written | seconds | records/s | CPU µs/record |")
    print("| --- | ---: | ---: | ---: | ---: |")
    logged = records(args.records, False)
    for no_log in (False, True):
        elapsed, cpu, written = throughput(records(args.records, True) if no_log else logged, args.cap)
        print(f"| {'none (no_log)' if no_log else 'request + response'} | {written} | {elapsed:.2f} | "
              f"{written / elapsed:.0f} | {cpu / max(1, written) * 1e6:.0f} |")

    sizes = store_bytes(logged)
    total = sum(v for k, v in sizes.items() if k != "payloads")
    print(f"\nStore bytes per routed call ({len(logged)} calls, pages of each table and its indexes)\n")
    print("| table | bytes/call |")
    print("| --- | ---: |")
    for table, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
        print(f"| {table} | {size:.0f} |")
    print(f"| **total, payloads excluded** | **{total:.0f}** |")

    print(f"\nEvent-loop stall: a 1 ms asyncio tick, {args.rate:g} records/s handed to the writer, "
          f"{args.stall_rounds} rounds of {args.stall_seconds:g} s with and without it, alternating; "
          f"CPU {', '.join(map(str, sorted(os.sched_getaffinity(0))))}\n")
    print("| writer | records | ticks | tick lateness p50 ms | p99 ms | p99.9 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    n = int(args.rate * args.stall_seconds) + 1
    stall_recs = (logged * (n // len(logged) + 1))[:n]
    pooled: dict[bool, tuple[list[float], int]] = {False: ([], 0), True: ([], 0)}
    for r in range(args.stall_rounds):
        for traced in ((False, True) if r % 2 == 0 else (True, False)):
            late, sent = loop_stall(stall_recs, args.rate, args.stall_seconds, traced)
            pooled[traced] = (pooled[traced][0] + late, pooled[traced][1] + (sent if traced else 0))
    for traced, (late, sent) in pooled.items():
        late.sort()
        q = (lambda f: late[min(len(late) - 1, int(len(late) * f))])
        print(f"| {'TraceWriter' if traced else 'none (traces off)'} | {sent} | {len(late)} | "
              f"{q(0.5):.3f} | {q(0.99):.3f} | {q(0.999):.2f} | {late[-1]:.2f} |")
    if args.soak:
        print(f"\nMemory: RSS of this process while one TraceWriter takes {args.soak} records\n")
        print("| records submitted | records written | RSS MB |")
        print("| ---: | ---: | ---: |")
        for done, rss, written in soak(args.soak, args.cap * 5):
            print(f"| {done} | {written} | {rss:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
