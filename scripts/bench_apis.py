#!/usr/bin/env python3
"""API-shape benchmark: CPU cost of stream translation and usage reading, per chunk.

    .venv/bin/python scripts/bench_apis.py [--chunks 400] [--repeat 30]

Builds a long provider stream (N content chunks, as a provider sends them, one
network read per event) and feeds it through each stream translator and usage
reader. Prints a Markdown table: CPU µs per provider event (process time, so that
other load on the machine inflates it less; median of --repeat runs),
MB/s, and the peak memory (tracemalloc) one translation holds. What a proxy
core pays per streamed token for translating instead of piping.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from routecar.apis import SHAPES   # noqa: E402
from routecar.apis.chat_via_messages_stream import MessagesToChatStream   # noqa: E402
from routecar.apis.messages_via_chat_stream import ChatToMessagesStream   # noqa: E402
from routecar.apis.responses_via_chat_stream import ChatToResponsesStream   # noqa: E402


def chat_stream(n: int) -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "gpt-bench"}

    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
        data = dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": finish}], usage=usage)
        return b"data: " + json.dumps(data).encode() + b"\n\n"
    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": f" token{i}"}) for i in range(n)]
    out.append(chunk({}, "stop"))
    out.append(b"data: " + json.dumps(dict(base, choices=[], usage={"prompt_tokens": 10, "completion_tokens": n,
                                                                      "total_tokens": 10 + n})).encode() + b"\n\n")
    return out + [b"data: [DONE]\n\n"]


def messages_stream(n: int) -> list[bytes]:
    def ev(data: dict) -> bytes:
        return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()
    out = [ev({"type": "message_start", "message": {"id": "msg_bench", "type": "message", "role": "assistant",
                                                    "model": "claude-bench", "content": [], "stop_reason": None,
                                                    "stop_sequence": None,
                                                    "usage": {"input_tokens": 10, "output_tokens": 1}}}),
           ev({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})]
    out += [ev({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f" token{i}"}})
            for i in range(n)]
    out += [ev({"type": "content_block_stop", "index": 0}),
            ev({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": n}}), ev({"type": "message_stop"})]
    return out


def run(make: Callable[[], object], chunks: list[bytes], close: bool) -> tuple[float, int]:
    t = make()
    t0 = time.process_time()
    out = 0
    for c in chunks:
        got = t.feed(c)   # type: ignore[attr-defined]
        out += len(got) if got else 0
    if close:
        out += len(t.close())   # type: ignore[attr-defined]
    return time.process_time() - t0, out


def peak(make: Callable[[], object], chunks: list[bytes], close: bool) -> int:
    tracemalloc.start()
    run(make, chunks, close)
    _, top = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return top


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chunks", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    chat, msgs = chat_stream(args.chunks), messages_stream(args.chunks)
    request = {"model": "m", "input": "x", "stream": True}
    cases: list[tuple[str, Callable[[], object], list[bytes], bool]] = [
        ("chat -> messages events (ChatToMessagesStream)", ChatToMessagesStream, chat, True),
        ("chat -> responses events (ChatToResponsesStream)", lambda: ChatToResponsesStream(request), chat, True),
        ("messages -> chat chunks (MessagesToChatStream)", lambda: MessagesToChatStream(True), msgs, True),
        ("usage reader, chat stream", SHAPES["chat"].usage_reader, chat, False),
        ("usage reader, messages stream", SHAPES["messages"].usage_reader, msgs, False),
    ]
    print(f"{args.chunks} content events per stream, median of {args.repeat} runs\n")
    print("| what | CPU µs / event | MB/s in | peak KiB |")
    print("| --- | ---: | ---: | ---: |")
    for name, make, chunks, close in cases:
        size = sum(map(len, chunks))
        times = [run(make, chunks, close)[0] for _ in range(args.repeat)]
        med = statistics.median(times)
        print(f"| {name} | {med / len(chunks) * 1e6:.1f} | {size / med / 1e6:.1f} | "
              f"{peak(make, chunks, close) / 1024:.0f} |")


if __name__ == "__main__":
    main()
