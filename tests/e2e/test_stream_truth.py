"""Streams that end early are not successes, end to end through the real `routecar run` with
the official SDKs (openai: chat, responses; anthropic: messages):

- a native stream that ends cleanly but without its terminal marker (chat `[DONE]`, Responses
  `response.completed`, Messages `message_stop`) reaches the app byte for byte, and its trace
  says `stream_truncated` (disposition `failed`) and health books a failure;
- a native stream carrying the provider's own error event is `stream_broken`;
- a translated stream that stops before it is complete ends with an error event in the app's
  shape (the SDK raises) and the trace says `stream_truncated`;
- the error event routecar adds to a broken native Responses stream continues its
  `sequence_number`;
- a long Messages stream is priced with the input tokens of its `message_start`, far more than
  the 8 KiB before its end.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

import anthropic
import openai
import pytest

from routecar.catalog import load_catalog
from routecar.pricing import Pricer
from routecar.usage import TokenUsage
from tests.e2e.conftest import Sidecar, curl_json, sdk
from tests.e2e.test_shapes import ant

MISTRAL = json.dumps({"rules": [["eq", "id", "mistral/mistral-small-3"]]})       # chat, native
HAIKU = json.dumps({"rules": [["eq", "id", "anthropic/claude-haiku-4-5"]]})     # messages, native
NANO = json.dumps({"rules": [["eq", "id", "openai/gpt-5.5-nano"]]})             # responses, native
USER = [{"role": "user", "content": "Say hello, please."}]


def sse(data: dict[str, Any], event: str | None = None) -> str:
    return (f"event: {event}\n" if event else "") + f"data: {json.dumps(data)}\n\n"


def chat_chunk(content: str | None, finish: str | None = None) -> str:
    delta = {"role": "assistant", "content": content} if content is not None else {}
    return sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def anthropic_events(stop: bool = True, error: bool = False) -> list[str]:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 1}}
    out = [sse({"type": "message_start", "message": message}, "message_start"),
           sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
               "content_block_start"),
           sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
               "content_block_delta")]
    if error:
        return out + [sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                          "error")]
    out += [sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                 "usage": {"output_tokens": 2}}, "message_delta")]
    return out + ([sse({"type": "message_stop"}, "message_stop")] if stop else [])


def responses_events(complete: bool = True) -> list[str]:
    base = {"id": "resp_1", "object": "response", "created_at": 1, "model": "m", "output": [],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "status": "in_progress"}
    item = {"id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    out = [sse({"type": "response.created", "response": base, "sequence_number": 0}, "response.created"),
           sse({"type": "response.output_item.added", "output_index": 0, "item": item, "sequence_number": 1},
               "response.output_item.added"),
           sse({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0,
                "delta": "Hello", "logprobs": [], "sequence_number": 2}, "response.output_text.delta")]
    if complete:
        done = {**base, "status": "completed", "usage": {
            "input_tokens": 9, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 11}}
        out.append(sse({"type": "response.completed", "response": done, "sequence_number": 3},
                       "response.completed"))
    return out


def row(side: Sidecar, trace_id: str) -> dict[str, Any]:
    """The trace row, polled with a deadline (the writer is a thread)."""
    cols = ("outcome", "disposition", "api_in", "api_out", "prompt_tokens", "completion_tokens", "actual_cost",
            "cost_source", "chosen_entry")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            got = side.trace_rows(f"SELECT {', '.join(cols)} FROM decisions WHERE trace_id = ?", trace_id)
        except sqlite3.OperationalError:
            got = []
        if got:
            return dict(zip(cols, got[0]))
        time.sleep(0.05)
    raise AssertionError(f"trace {trace_id} was not written within 10 s")


def health(side: Sidecar, entry: str) -> dict[str, Any]:
    """/x/healthz of `entry`, once its stream's verdict was booked (at the stream's end)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, body = curl_json(side, "GET", "/x/healthz")
        if entry in body["health"]:
            return body["health"][entry]
        time.sleep(0.05)
    raise AssertionError(f"no health for {entry}")


# -- native streams: relayed as they are, traced as they ended -----------------------------------

@pytest.mark.parametrize("finish,done,outcome", [
    (True, True, "ok"),
    (True, False, "ok"),                  # finished answer, no [DONE]: complete, as for the translators
    (False, False, "stream_truncated"),   # cut before any choice finished
])
def test_native_chat_stream_without_done(sidecar, fake, finish, done, outcome):
    side = sidecar()
    pieces = [chat_chunk(""), chat_chunk("Hello"), *([chat_chunk(None, "stop")] if finish else []),
              *(["data: [DONE]\n\n"] if done else [])]
    fake.set_script("mistral", [{"raw_chunks": pieces, "chunk_delay": 0.02}])
    s = sdk(side, default_headers={"X-Route-Policy": MISTRAL}).chat.completions.create(
        model="gpt-4o", messages=USER, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
    assert text == "Hello"   # what the provider sent, nothing added to a native stream
    t = row(side, s.response.headers["x-route-trace-id"])
    ok = outcome == "ok"
    assert (t["outcome"], t["disposition"]) == (outcome, "routed" if ok else "failed")
    h = health(side, "mistral/mistral-small-3")
    assert (h["samples"], h["consecutive_failures"]) == (1, 0 if ok else 1)


@pytest.mark.parametrize("mode", ["regular", "reverse"])
def test_native_messages_stream_without_message_stop(sidecar, fake, mode):
    side = sidecar(mode=mode)
    fake.set_script("anthropic", [{"raw_chunks": anthropic_events(stop=False), "chunk_delay": 0.02}])
    with ant(side, HAIKU).messages.stream(model="claude-whatever", max_tokens=64, messages=USER) as s:
        text = "".join(s.text_stream)
        trace_id = s.response.headers["x-route-trace-id"]
    assert text == "Hello"
    t = row(side, trace_id)
    assert (t["outcome"], t["disposition"], t["api_out"]) == ("stream_truncated", "failed", "messages")
    assert health(side, "anthropic/claude-haiku-4-5")["consecutive_failures"] == 1


def test_native_messages_stream_with_the_providers_error_event(sidecar, fake):
    side = sidecar()
    fake.set_script("anthropic", [{"raw_chunks": anthropic_events(error=True), "chunk_delay": 0.02}])
    client = ant(side, HAIKU)
    with pytest.raises(anthropic.APIStatusError) as ei:
        with client.messages.stream(model="claude-whatever", max_tokens=64, messages=USER) as s:
            for _ in s:
                pass
    assert "Overloaded" in str(ei.value)
    t = row(side, ei.value.response.headers["x-route-trace-id"])
    assert (t["outcome"], t["disposition"]) == ("stream_broken", "failed")


@pytest.mark.parametrize("complete,outcome", [(True, "ok"), (False, "stream_truncated")])
def test_native_responses_stream_without_its_terminal_event(sidecar, fake, complete, outcome):
    side = sidecar()
    fake.set_script("openai", [{"raw_chunks": responses_events(complete), "chunk_delay": 0.02}])
    s = sdk(side, default_headers={"X-Route-Policy": NANO}).responses.create(model="gpt-4o", input="hi", stream=True)
    kinds = [e.type for e in s]
    assert kinds[-1] == ("response.completed" if complete else "response.output_text.delta")
    t = row(side, s.response.headers["x-route-trace-id"])
    assert (t["outcome"], t["api_in"], t["api_out"]) == (outcome, "responses", "responses")
    if complete:
        assert (t["prompt_tokens"], t["completion_tokens"]) == (9, 2)


# -- translated streams: the app is told, the trace says so -----------------------------------------

def test_translated_stream_that_stops_early(sidecar, fake):
    """An anthropic SDK app on a chat provider whose stream ends cleanly before finish_reason."""
    side = sidecar()
    fake.set_script("mistral", [{"raw_chunks": [chat_chunk(""), chat_chunk("Hel")], "chunk_delay": 0.02}])
    with pytest.raises(anthropic.APIStatusError) as ei:
        with ant(side, MISTRAL).messages.stream(model="claude-whatever", max_tokens=64, messages=USER) as s:
            for _ in s:
                pass
    assert "ended before the answer was complete" in str(ei.value)
    t = row(side, ei.value.response.headers["x-route-trace-id"])
    assert (t["outcome"], t["disposition"], t["api_in"], t["api_out"]) == (
        "stream_truncated", "failed", "messages", "chat")
    assert health(side, "mistral/mistral-small-3")["consecutive_failures"] == 1


# -- the error event routecar adds to a native Responses stream continues its sequence ---------------

def test_responses_error_event_continues_the_sequence(sidecar, fake):
    side = sidecar()
    fake.set_script("openai", [{"chunks": 6, "cut_after_chunks": 3, "chunk_delay": 0.05}])
    s = sdk(side, default_headers={"X-Route-Policy": NANO}).responses.create(model="gpt-4o", input="hi", stream=True)
    evs = list(s)
    assert evs[-1].type == "error" and "stream broke" in evs[-1].message
    assert [e.sequence_number for e in evs] == list(range(len(evs)))   # 0, 1, ... n: no restart at 0
    assert row(side, s.response.headers["x-route-trace-id"])["outcome"] == "stream_broken"


# -- a long stream is priced from all of it -----------------------------------------------------------

def test_long_messages_stream_is_priced_with_its_message_start_input_tokens(sidecar, fake):
    side = sidecar()
    prompt = "tell me a long story " * 200                                   # 4200 chars: 1050 tokens
    fake.set_script("anthropic", [{"content": "once upon a time " * 1500, "chunks": 800}])   # ~90 KiB of deltas
    with ant(side, HAIKU).messages.stream(model="claude-whatever", max_tokens=8000,
                                          messages=[{"role": "user", "content": prompt}]) as s:
        final = s.get_final_message()
        trace_id = s.response.headers["x-route-trace-id"]
    assert final.usage.input_tokens == 1050 and final.usage.output_tokens == 6375
    t = row(side, trace_id)
    assert (t["outcome"], t["prompt_tokens"], t["completion_tokens"]) == ("ok", 1050, 6375)
    entry = load_catalog().get("anthropic/claude-haiku-4-5")
    expected = Pricer().cost(entry.provider, entry.model, TokenUsage(input=1050, output=6375),
                             (entry.price_in, entry.price_out))
    assert expected is not None and t["cost_source"] == expected.source
    assert t["actual_cost"] == pytest.approx(expected.usd)
    output_only = Pricer().cost(entry.provider, entry.model, TokenUsage(output=6375), (entry.price_in, entry.price_out))
    assert output_only is not None and t["actual_cost"] > output_only.usd   # the input tokens were paid for
