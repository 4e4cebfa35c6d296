#!/usr/bin/env python3
"""Who holds the proxy's core: `perf sched` on it while wrk loads one routecar case.

    .venv/bin/python scripts/bench_sched.py [--cases c,f] [--baseline DIR] [--rounds 3] [--seconds 5]

The proxy is pinned to CPU 0 (upstream and wrk to the others, as in
bench_proxy.py) and loaded at concurrency 1 while `perf sched record -C 0`
traces every context switch on CPU 0. For each case (and, with --baseline, the
same case on another checkout's code; rounds interleaved) it prints the share
of CPU 0 each task had and the length of its time slices: the proxy's event
loop (its main thread), the trace writer thread (`routecar-traces`; code that
does not name it shows as `routecar`), other processes of the machine, and
idle. A request waits whenever something else holds the core (or the GIL) it
needs: long writer slices are what a traced call's p99 is made of. Also printed:
how long the event loop waited for the core after each wake-up (run-queue
delay). Needs `perf` (linux-perf) and the right to trace scheduler events
(root, or kernel.perf_event_paranoid <= 1). Bounded: --seconds per run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import bench_proxy as bp

LINE = re.compile(r"\s*[\d.]+\s+\[\d+\]\s+(?P<name>.*?)\[(?P<tid>\d+)(?:/(?P<pid>\d+))?\]\s+"
                  r"(?P<wait>[\d.]+)\s+(?P<delay>[\d.]+)\s+(?P<run>[\d.]+)")
IDLE = re.compile(r"\s*[\d.]+\s+\[\d+\]\s+<idle>\s+[\d.]+\s+[\d.]+\s+(?P<run>[\d.]+)")


def one_run(case: str, code: Path | None, up_port: int, work: Path, seconds: float, conns: int,
            cpu: int, load_cpus: set[int]) -> tuple[dict, dict[str, list[float]], list[float]]:
    """(wrk result, {task: slice lengths ms}, event-loop run-queue delays ms) of one traced run."""
    target = bp.start_case(case, up_port, work, {cpu}, None, code)
    assert target.proc is not None
    pid = target.proc.pid
    data = work / "sched.data"
    try:
        bp.load(target, "wrk", 300, 16, 30, load_cpus)  # warm-up
        rec = subprocess.Popen(["perf", "sched", "record", "-C", str(cpu), "-o", str(data), "--", "sleep",
                                str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=bp._pin(load_cpus))
        time.sleep(0.3)
        result = bp.load(target, "wrk", 1_000_000, conns, max(1.0, seconds - 0.6), load_cpus)
        rec.wait(timeout=seconds + 60)
        names = {int(t.name): (t / "comm").read_text().strip() for t in Path(f"/proc/{pid}/task").iterdir()}
    finally:
        bp._stop(target.proc)
    out = subprocess.run(["perf", "sched", "timehist", "-i", str(data), "-C", str(cpu)],
                         capture_output=True, text=True, timeout=120).stdout
    slices: dict[str, list[float]] = defaultdict(list)
    delays: list[float] = []
    for line in out.splitlines():
        m = LINE.match(line)
        if m is None:
            if (i := IDLE.match(line)) is not None:
                slices["idle"].append(float(i.group("run")))
            continue
        tid = int(m.group("tid"))
        if tid == pid:
            who = "proxy event loop"
            delays.append(float(m.group("delay")))
        elif tid in names:
            who = f"proxy thread {names[tid]}"
        elif int(m.group("pid") or 0) == pid:
            who = "proxy thread (ended)"
        else:
            who = "other processes"
        slices[who].append(float(m.group("run")))
    return result, slices, delays


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="c,f", help="routecar cases of bench_proxy.py (default c,f)")
    p.add_argument("--baseline", type=Path, help="also run each case with the code of checkout DIR")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0, help="traced seconds per run (default 5)")
    p.add_argument("--concurrency", type=int, default=1)
    args = p.parse_args()
    if shutil.which("perf") is None:
        print("perf is not installed (apt-get install linux-perf): nothing measured")
        return 0
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("needs 2 CPUs (the proxy alone on one)")
        return 0
    cpu, load_cpus = cpus[0], set(cpus[1:])
    variants = [(c, code) for c in args.cases.split(",") for code in ((args.baseline, None) if args.baseline else (None,))]
    pooled: dict[tuple[str, str], tuple[list[dict], dict[str, list[float]], list[float]]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="routecar-sched-") as tmp:
        work = Path(tmp)
        ready = work / "upstream.json"
        upstream = subprocess.Popen([bp.PY, bp.__file__, "--serve-upstream", str(ready)], preexec_fn=bp._pin(load_cpus))
        try:
            port = bp._wait_json(ready, upstream)["port"]
            for n in range(max(1, args.rounds)):
                for case, code in (variants if n % 2 == 0 else variants[::-1]):
                    result, slices, delays = one_run(case, code, port, work, args.seconds, args.concurrency,
                                                     cpu, load_cpus)
                    key = (case, "baseline" if code else "")
                    runs, pool, dl = pooled.setdefault(key, ([], defaultdict(list), []))
                    runs.append(result)
                    for who, v in slices.items():
                        pool[who] += v
                    dl += delays
        finally:
            bp._stop(upstream)
    load = " / ".join(f"{x:.1f}" for x in load_before) + " before, " + " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"CPU {cpu} under `perf sched`, wrk at concurrency {args.concurrency}, {args.rounds} interleaved round(s) "
          f"of {args.seconds:g} s per case; load average {load} after\n")
    print("| case | task on the proxy's core | share of the core | slices | slice p50 ms | p99 ms | max ms |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for (case, code), (runs, pool, delays) in pooled.items():
        total = sum(sum(v) for v in pool.values()) or 1.0
        title = f"{case}{' [baseline]' if code else ''}"
        for who, v in sorted(pool.items(), key=lambda kv: -sum(kv[1])):
            v.sort()
            print(f"| {title} | {who} | {sum(v) / total:.1%} | {len(v)} | {pct(v, .5):.3f} | {pct(v, .99):.3f} | "
                  f"{v[-1]:.2f} |")
    print("\n| case | requests | req/s (median) | p50 ms (median) | p99 ms (median) | event-loop run-queue delay p99 / max ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for (case, code), (runs, _, delays) in pooled.items():
        delays.sort()
        med = (lambda k: sorted(r[k] for r in runs)[len(runs) // 2])
        rps = sorted(r["requests"] / r["elapsed"] for r in runs)[len(runs) // 2]
        print(f"| {case}{' [baseline]' if code else ''} | {sum(r['requests'] for r in runs)} | {rps:.0f} | "
              f"{med('p50') * 1000:.2f} | {med('p99') * 1000:.2f} | {pct(delays, .99):.3f} / "
              f"{delays[-1] if delays else float('nan'):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
