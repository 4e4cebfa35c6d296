#!/usr/bin/env python3
"""Trace writer throughput: records/s from submit() to committed rows, on the default catalog.

    .venv/bin/python scripts/bench_traces.py [--records 5000] [--cap 60]

Each record is what the addon writes for one routed request: the full decision
(every catalog entry's verdict, the ranking), one attempt, and a small payload
(or none with no_log). Prints a Markdown table; bounded by count and time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from routecar.catalog import load_catalog  # noqa: E402
from routecar.policy import RequestProfile, evaluate, parse_policy  # noqa: E402
from routecar.traces.record import TraceRecord  # noqa: E402
from routecar.traces.writer import TraceWriter  # noqa: E402


def records(n: int, no_log: bool) -> list[TraceRecord]:
    cat = load_catalog()
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Summarise our Q3 churn in 3 bullets."}]}
    pol = parse_policy({"rules": [["cmp", "bench_intelligence", "ge", 0.5]], "no_log": no_log}, cat.registry)
    out = []
    for i in range(n):
        d = evaluate(pol, cat, RequestProfile.from_body(body))
        out.append(TraceRecord(
            trace_id=f"rt_bench{i:08d}", ts=time.time(), tenant="acme-free", mode="regular", no_log=no_log,
            status=200, outcome="ok", latency_ms=3.1, ttfb_ms=2.0,
            usage={"prompt_tokens": 20, "completion_tokens": 9},
            decision=d,
            attempts=[{"entry": d.selected.entry.id, "provider": d.selected.entry.provider,
                       "model": d.selected.entry.model, "status": 200, "error_class": "ok", "duration_ms": 2.0}],
            request_body=None if no_log else str(body), response_body=None if no_log else '{"id": "x"}',
            catalog=cat.to_list() if i == 0 else None))
    return out


def run(n: int, no_log: bool, cap: float) -> tuple[float, int]:
    recs = records(n, no_log)
    with tempfile.TemporaryDirectory() as tmp:
        w = TraceWriter(Path(tmp) / "traces.db", max_queue=n + 1).start()
        t0 = time.perf_counter()
        for r in recs:
            w.submit(r)
        w.flush(timeout=cap)
        elapsed = time.perf_counter() - t0
        written = w.stats()["written"]
        w.close()
    return elapsed, written


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=5000)
    p.add_argument("--cap", type=float, default=60.0, help="seconds per run at most")
    args = p.parse_args()
    print(f"Trace writer throughput, {args.records} records per run, default catalog "
          f"({len(load_catalog().entries)} entries -> one candidates row each)\n")
    print("| payload | records written | seconds | records/s | µs/record |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for no_log in (False, True):
        elapsed, written = run(args.records, no_log, args.cap)
        print(f"| {'none (no_log)' if no_log else 'request + response'} | {written} | {elapsed:.2f} | "
              f"{written / elapsed:.0f} | {elapsed / max(1, written) * 1e6:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
