#!/usr/bin/env python3
"""CPU per call of what issue 13 adds to a routed request, measured in-process.

For each piece, the process CPU time (all threads: the span exporter's too) over
N calls, divided by N:

  facts      usage.response_facts on a chat answer (usage, model, finish reasons)
  cost       Pricer.cost (genai-prices; flat and tiered models)
  metrics    Metrics.observe (counters, histograms) + one scrape every 1000 calls
  access     the access line through a logging handler writing to /dev/null
  spans      Spans.observe + BatchSpanProcessor + OTLP/HTTP export to a loopback receiver

This complements `scripts/bench_proxy.py --cases c,g,q,h` (the same features
measured as whole-proxy CPU per request, by difference): on a shared machine the
proxy figures swing by ±20 %, more than these features cost; the in-process
figures isolate them.

    .venv/bin/python scripts/bench_telemetry.py --calls 20000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from routecar.accesslog import AccessLog  # noqa: E402
from routecar.metrics import Metrics, SidecarState  # noqa: E402
from routecar.outcome import CallOutcome  # noqa: E402
from routecar.pricing import Pricer  # noqa: E402
from routecar.spans import Spans  # noqa: E402
from routecar.usage import TokenUsage, response_facts  # noqa: E402
from tests.fakes.otlp import OtlpReceiver  # noqa: E402

ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "gpt-5.5",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "pong " * 200}}],
    "usage": {"prompt_tokens": 900, "completion_tokens": 200, "total_tokens": 1100,
              "prompt_tokens_details": {"cached_tokens": 512}, "completion_tokens_details": {"reasoning_tokens": 64}},
}).encode()


def outcome(i: int) -> CallOutcome:
    facts = response_facts(ANSWER)
    return CallOutcome(f"rt_{i:x}", time.time() - 0.4, 0.4, 200, "ok", tenant=f"tenant-{i % 20}",
                       fingerprint="pol_8f41c2", entry="openai/gpt-5.5", provider="openai", model="gpt-5.5",
                       requested_model="gpt-4o", attempts=({"provider": "openai", "model": "gpt-5.5",
                                                            "error_class": "ok"},),
                       ttfb_s=0.1, no_log=False, facts=facts, cost=None, est_cost=0.001,
                       trace_context={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})


def cpu_us(fn, n: int) -> float:
    fn(0)  # warm caches
    t0 = time.process_time()
    for i in range(n):
        fn(i)
    return (time.process_time() - t0) / n * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=20000)
    args = p.parse_args()
    n = args.calls
    rows: list[tuple[str, float]] = []
    rows.append(("facts (response_facts, 1.2 KB answer)", cpu_us(lambda i: response_facts(ANSWER), n)))
    pricer = Pricer()
    usage = TokenUsage(900, 512, 200, 64)
    rows.append(("cost, flat price (openai/gpt-4o)", cpu_us(lambda i: pricer.cost("openai", "gpt-4o", usage), n)))
    rows.append(("cost, tiered price (openai/gpt-5.5)", cpu_us(lambda i: pricer.cost("openai", "gpt-5.5", usage), n)))
    rows.append(("cost, catalog fallback (unknown model)",
                 cpu_us(lambda i: pricer.cost("openai", "fake-x", usage, (1.0, 2.0)), n)))
    calls = [outcome(i) for i in range(64)]
    metrics = Metrics(state=lambda: SidecarState())
    rows.append(("metrics.observe (+ a scrape per 1000 calls)",
                 cpu_us(lambda i: (metrics.observe(calls[i % 64]), i % 1000 == 0 and metrics.exposition()), n)))
    logger = logging.getLogger("bench.access")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - closed at exit
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s"))
    logger.addHandler(handler)
    access = AccessLog(logger)
    rows.append(("access line (formatted, written to /dev/null)", cpu_us(lambda i: access.observe(calls[i % 64]), n)))
    os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(n + 1)   # export every span: none dropped, all paid for
    with OtlpReceiver() as rx:
        spans = Spans(rx.url + "/v1/traces", env={}, schedule_delay_ms=200)
        t0 = time.process_time()
        for i in range(n):
            spans.observe(calls[i % 64])
        spans.close()   # the export thread's CPU counts too: flush everything before stopping the clock
        rows.append(("spans (observe + batch export over OTLP/HTTP)", (time.process_time() - t0) / n * 1e6))
        exported, received = rx.requests, len(rx.spans)
    print(f"CPU per call over {n} calls (process CPU time, all threads; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}):\n")
    print("| piece | µs CPU per call |\n| --- | ---: |")
    for name, us in rows:
        print(f"| {name} | {us:.1f} |")
    print(f"\n- spans: the loopback receiver got {received} of {n} span(s) in {exported} export request(s); "
          "its decoding runs in this process too, so the spans figure is an upper bound")
    return 0


if __name__ == "__main__":
    sys.exit(main())
