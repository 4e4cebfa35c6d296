"""Usage and response facts as providers report them, in every spelling."""

from __future__ import annotations

import json

import pytest

from routecar.usage import ResponseFacts, TokenUsage, response_facts

CHAT = {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
        "prompt_tokens_details": {"cached_tokens": 1000, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 120}}
RESPONSES = {"input_tokens": 1200, "output_tokens": 300, "total_tokens": 1500,
             "input_tokens_details": {"cached_tokens": 1000}, "output_tokens_details": {"reasoning_tokens": 120}}
ANTHROPIC = {"input_tokens": 100, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 100,
             "output_tokens": 300}


@pytest.mark.parametrize("reported, expected", [
    (CHAT, TokenUsage(1200, 1000, 300, 120)),
    (RESPONSES, TokenUsage(1200, 1000, 300, 120)),
    (ANTHROPIC, TokenUsage(1200, 1000, 300, 0, 100)),
    ({"prompt_tokens": 9, "completion_tokens": 1}, TokenUsage(9, 0, 1, 0)),
    ({"input_tokens": 5, "output_tokens": 2}, TokenUsage(5, 0, 2)),
    # inconsistent or hostile reports are clamped, never negative
    ({"prompt_tokens": -5, "completion_tokens": "7"}, TokenUsage(0, 0, 0)),
    ({"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 99}, "completion_tokens": 3,
      "completion_tokens_details": {"reasoning_tokens": 50}}, TokenUsage(10, 10, 3, 3)),
    ({"prompt_tokens": True, "completion_tokens": float("nan")}, TokenUsage(0, 0, 0)),
    ({"total_tokens": 10}, None),
    ("not a mapping", None),
    (None, None),
])
def test_from_reported(reported, expected):
    assert TokenUsage.from_reported(reported) == expected


def test_trace_spelling_round_trips():
    u = TokenUsage(1200, 1000, 300, 120)
    assert TokenUsage.from_reported(u.to_trace()) == u


def test_parts_never_exceed_the_whole():
    u = TokenUsage(input=10, cached_input=8, output=5, reasoning=9, cache_write=7)
    assert (u.cached_input, u.cache_write, u.reasoning) == (8, 2, 5)


def test_whole_chat_answer():
    body = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"content": "hi"}},
                        {"index": 1, "finish_reason": "length", "message": {"content": "h"}}],
            "usage": CHAT}
    facts = response_facts(json.dumps(body).encode())
    assert facts == ResponseFacts(TokenUsage(1200, 1000, 300, 120), "gpt-4o-2024-08-06", "chatcmpl-1",
                                  ("stop", "length"))


def test_whole_messages_and_responses_answers():
    msg = {"id": "msg_1", "type": "message", "model": "claude-x", "stop_reason": "end_turn", "usage": ANTHROPIC}
    assert response_facts(json.dumps(msg).encode()).finish_reasons == ("end_turn",)
    resp = {"id": "resp_1", "object": "response", "model": "gpt-x", "status": "completed", "usage": RESPONSES}
    facts = response_facts(json.dumps(resp).encode())
    assert facts.finish_reasons == ("completed",) and facts.usage == TokenUsage(1200, 1000, 300, 120)


def test_stream_tail_with_nested_usage():
    chunks = [{"id": "c1", "model": "m-1", "choices": [{"delta": {"content": "x"}, "finish_reason": None}],
               "usage": None},
              {"id": "c1", "model": "m-1", "choices": [{"delta": {}, "finish_reason": "stop"}], "usage": CHAT}]
    tail = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    facts = response_facts(tail[5:])   # a tail starts anywhere
    assert facts.usage == TokenUsage(1200, 1000, 300, 120)
    assert facts.model == "m-1" and facts.finish_reasons == ("stop",)


@pytest.mark.parametrize("blob", [None, b"", b"{not json", b"data: [DONE]\n\n", b'"usage": {broken',
                                  b"\xff\xfe" * 10, b"[1, 2]"])
def test_garbage_gives_no_facts(blob):
    facts = response_facts(blob)
    assert facts.usage is None and facts.finish_reasons == ()


def test_content_cannot_fake_the_facts():
    """Text in the answer that spells keys is escaped JSON: it never counts as structure."""
    fake = json.dumps({"model": "evil", "finish_reason": "hacked", "usage": {"prompt_tokens": 10 ** 9}})
    body = {"id": "chatcmpl-1", "object": "chat.completion", "model": "real-model",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"content": fake}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7}}
    facts = response_facts(json.dumps(body).encode())
    assert facts == ResponseFacts(TokenUsage(5, 0, 7), "real-model", "chatcmpl-1", ("stop",))


PAYLOADS = __import__("pathlib").Path(__file__).parent / "payloads"


@pytest.mark.parametrize("name, usage, reasons", [
    ("chat/answer_text.json", TokenUsage(24, 0, 8), ("stop",)),
    ("chat/answer_tool_calls.json", TokenUsage(2120, 2048, 52), ("tool_calls",)),
    ("chat/stream_text.sse", TokenUsage(31, 0, 9), ("stop",)),
    ("chat/stream_tool_calls.sse", TokenUsage(2120, 2048, 52), ("tool_calls",)),
    ("chat/stream_error.sse", None, ()),
    ("messages/answer_tool_use.json", TokenUsage(472 + 1024 + 100, 1024, 89, 0, 100), ("tool_use",)),
    # input tokens come in message_start, output tokens in message_delta: both are read
    ("messages/stream_text.sse", TokenUsage(25, 0, 12), ("end_turn",)),
    ("messages/stream_thinking.sse", TokenUsage(40, 0, 120), ("max_tokens",)),
    ("messages/stream_tool_use.sse", TokenUsage(472 + 1024, 1024, 89), ("tool_use",)),
    ("messages/error_overloaded.json", None, ()),
    ("responses/answer_text.json", TokenUsage(21, 0, 8), ("completed",)),
    ("responses/stream_text.sse", TokenUsage(21, 0, 8), ("completed",)),
])
def test_recorded_answers_of_every_shape(name, usage, reasons):
    """The recorded provider payloads (tests/payloads, checked against the official SDK types)."""
    facts = response_facts((PAYLOADS / name).read_bytes())
    assert (facts.usage, facts.finish_reasons) == (usage, reasons)


@pytest.mark.parametrize("name", ["chat/answer_tool_calls.json", "chat/stream_tool_calls.sse",
                                  "messages/answer_tool_use.json", "messages/stream_tool_use.sse",
                                  "messages/stream_thinking.sse", "responses/answer_text.json",
                                  "responses/stream_text.sse"])
def test_a_shapes_usage_is_what_pricing_takes(name):
    """addon/apis reads usage per API shape (a stream: the whole of it, incrementally) in the one
    type pricing takes, with the same counts as the facts read from the answer's bytes."""
    from routecar.apis import SHAPES

    blob = (PAYLOADS / name).read_bytes()
    shape = SHAPES[name.split("/")[0]]  # type: ignore[index]
    if name.endswith(".sse"):
        reader = shape.usage_reader()
        reader.feed(blob)
        usage = reader.usage
    else:
        usage = shape.usage(blob)
    assert type(usage) is TokenUsage and usage == response_facts(blob).usage
