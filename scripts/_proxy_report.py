"""Two reports of scripts/bench_proxy.py: the issue-15 targets, and memory over a long run.

`targets(rows)` checks the medians of cases b, c and f against the targets of
issue 15 ("Tracing off the tail"), for this checkout's code and, when run with
--baseline, for the baseline's: traced p99 at concurrency 1 at most 3 ms and at
most 1.3x the untraced p99; traced req/s at least 90 % of untraced; routed and
traced req/s at least 1.2x stock mitmdump's.

`soak(...)` loads one proxy with many requests in fifths and reads its resident
memory (VmRSS of the proxy and its children) after each: flat is the target.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def status_mb(pids: list[int], field: str = "VmRSS") -> float:
    """Sum over `pids` of a /proc/PID/status memory field (VmRSS: now, VmHWM: peak), in MB."""
    total = 0.0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def targets(rows: list[dict]) -> list[str]:
    """Markdown lines: each issue-15 target per code (this checkout, baseline) with its figures."""
    by = {(r["case"], r.get("code", ""), r["conns"]): r for r in rows}
    out: list[str] = []
    for code in sorted({r.get("code", "") for r in rows if r["case"] == "c"}, reverse=True):
        tag = "baseline" if code else "this checkout"
        checks: list[tuple[str, str, bool]] = []
        for conns in sorted({k[2] for k in by if k[0] == "c" and k[1] == code}):
            c, f, b = by.get(("c", code, conns)), by.get(("f", code, conns)), by.get(("b", "", conns))
            if c is None:
                continue
            if conns == 1:
                p99 = c["p99"] * 1000
                checks.append(("traced p99 at c=1 <= 3 ms", f"{p99:.2f} ms", p99 <= 3.0))
                if f is not None:
                    ratio = c["p99"] / f["p99"] if f["p99"] else float("inf")
                    checks.append(("traced p99 <= 1.3x untraced (c=1)",
                                   f"{p99:.2f} / {f['p99'] * 1000:.2f} ms = {ratio:.2f}x", ratio <= 1.3))
            if f is not None and f["rps"]:
                share = c["rps"] / f["rps"]
                checks.append((f"traced req/s >= 90 % of untraced (c={conns})",
                               f"{c['rps']:.0f} / {f['rps']:.0f} = {share:.0%}", share >= 0.9))
            if b is not None and b["rps"]:
                ratio = c["rps"] / b["rps"]
                checks.append((f"routed+traced >= 1.2x stock mitmdump req/s (c={conns})",
                               f"{c['rps']:.0f} / {b['rps']:.0f} = {ratio:.2f}x", ratio >= 1.2))
        if checks:
            out += ["", f"Issue 15 targets, {tag} (medians above):", "", "| target | figure | status |",
                    "| --- | --- | --- |"]
            out += [f"| {name} | {fig} | {'met' if ok else 'MISSED'} |" for name, fig, ok in checks]
    return out


def soak(total: int, cap_s: float, run_chunk: Callable[[int], dict], pids: Callable[[], list[int]],
         traces: Callable[[], object]) -> list[str]:
    """Load the running proxy with `total` requests in fifths (`run_chunk(n)` -> wrk result), at most
    `cap_s` seconds in all; Markdown rows of requests done, RSS MB and traces written after each."""
    lines = ["| requests | RSS MB | traces written | req/s of the fifth |", "| ---: | ---: | ---: | ---: |",
             f"| 0 | {status_mb(pids()):.1f} | {traces()} | — |"]
    done, deadline, step = 0, time.monotonic() + cap_s, max(1, total // 5)
    while done < total and time.monotonic() < deadline:
        r = run_chunk(min(step, total - done))
        done += r["requests"]
        lines.append(f"| {done} | {status_mb(pids()):.1f} | {traces()} | "
                     f"{r['requests'] / r['elapsed'] if r['elapsed'] else 0:.0f} |")
        if not r["requests"]:
            break
    return lines
