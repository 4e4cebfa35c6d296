"""An OpenAI chat caller served by an Anthropic Messages provider: request chat -> Messages,
answer Messages -> chat, errors, and the Messages event stream -> chat SSE chunks, checked
against recorded payloads and consumed by the real openai SDK."""

from __future__ import annotations

import json

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routecar.apis.chat_via_messages import to_chat_completion, to_chat_error, to_messages
from routecar.apis.chat_via_messages_stream import MessagesToChatStream
from routecar.errors import BadRequest
from tests.apis_payloads import chat_chunks, chat_completion, load, openai_over, raw, valid_request

USER = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def test_recorded_request() -> None:
    body = load("chat/request_full.json")
    req = to_messages(body, "claude-sonnet-4-5")
    valid_request("messages", req)
    png = body["messages"][2]["content"][1]["image_url"]["url"].removeprefix("data:image/png;base64,")
    assert req["system"] == [{"type": "text", "text": "You are a weather assistant."},
                             {"type": "text", "text": "Answer in one sentence."}]
    assert req["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "What is the weather like in Paris? And what is in this picture?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
            {"type": "image", "source": {"type": "url", "url": body["messages"][2]["content"][2]["image_url"]["url"]}}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "call_Wq3nVb8KxT5mPz2L", "name": "get_weather",
             "input": {"city": "Paris", "unit": "celsius"}},
            {"type": "tool_use", "id": "call_Hd7rYc1NsQ4jGk9F", "name": "get_weather", "input": {"city": "Lyon"}}]},
        {"role": "user", "content": [   # tool results and the next user turn: one user message
            {"type": "tool_result", "tool_use_id": "call_Wq3nVb8KxT5mPz2L", "content": "15 degrees, light rain"},
            {"type": "tool_result", "tool_use_id": "call_Hd7rYc1NsQ4jGk9F", "content": "18 degrees, sunny"},
            {"type": "text", "text": "Thanks. Summarise."}]},
    ]
    fn = body["tools"][0]["function"]
    assert req["tools"] == [{"name": "get_weather", "description": fn["description"],
                             "input_schema": fn["parameters"]}]
    rest = {k: v for k, v in req.items() if k not in ("model", "messages", "tools", "system")}
    assert rest == {"max_tokens": 300, "temperature": 1.0, "top_p": 0.9, "stop_sequences": ["END"],
                    "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
                    "output_config": {"format": {"type": "json_schema",
                                                 "schema": body["response_format"]["json_schema"]["schema"]}},
                    "stream": True, "metadata": {"user_id": "user-4711"}}   # seed: dropped


@pytest.mark.parametrize(("body", "key", "expected"), [
    ({"messages": USER}, "max_tokens", 4096),                       # Messages requires it
    ({"messages": USER, "max_tokens": 7, "max_completion_tokens": 9}, "max_tokens", 9),
    ({"messages": USER, "stop": "END"}, "stop_sequences", ["END"]),
    ({"messages": USER, "temperature": 0.2}, "temperature", 0.2),
    ({"messages": USER, "tools": [TOOL]}, "tool_choice", {"type": "auto"}),
    ({"messages": USER, "tools": [TOOL], "parallel_tool_calls": False}, "tool_choice",
     {"type": "auto", "disable_parallel_tool_use": True}),
    ({"messages": USER, "tools": [TOOL], "tool_choice": "required"}, "tool_choice", {"type": "any"}),
    ({"messages": USER, "tools": [TOOL], "tool_choice": "none", "parallel_tool_calls": False}, "tool_choice",
     {"type": "none"}),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "late rule"},
                   {"role": "user", "content": [{"type": "text", "text": "b"}]},
                   {"role": "assistant", "content": ""}, {"role": "assistant", "content": None},
                   {"role": "assistant", "content": "c"}, {"role": "assistant", "content": "d"}]},
     "messages", [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]}]),
    ({"messages": [{"role": "system", "content": "late rule"}, *USER]}, "system",
     [{"type": "text", "text": "late rule"}]),
    ({"messages": USER, "user": "u-1"}, "metadata", {"user_id": "u-1"}),
])
def test_request_cases(body: dict, key: str, expected: object) -> None:
    assert to_messages(body, "m")[key] == expected


@pytest.mark.parametrize(("body", "message"), [
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}]}]},
     "messages[0].tool_calls[0].function.arguments: must be a JSON object"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "messages[0].content[0]: content part type 'input_audio' cannot be sent to this model"),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role: 'function' cannot"),
    ({"messages": USER, "tools": [{"type": "custom", "custom": {"name": "g"}}]},
     "tools[0]: only function tools can be sent to this model"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}]},
     "messages[0].content[0].image_url.url: a data URL must be base64"),
    ({"messages": None}, "messages: expected a list of messages"),
])
def test_untranslatable_requests_are_clear_errors(body: dict, message: str) -> None:
    with pytest.raises(BadRequest) as ei:
        to_messages(body, "m")
    assert ei.value.message.startswith(message)


@pytest.mark.parametrize(("payload", "content", "calls", "finish", "usage"), [
    ("messages/answer_text.json", "Paris is the capital of France.", [], "stop", (25, 11, 0)),
    ("messages/answer_tool_use.json", "I'll check the weather in Paris.",   # the thinking block is dropped
     [("toolu_01A09q90qw90lq917835lq9", "get_weather", {"city": "Paris", "unit": "celsius"})], "tool_calls",
     (472 + 100 + 1024, 89, 1024)),
    ("messages/answer_stop_sequence.json", "1, 2, 3", [], "stop", (14, 7, 0)),
])
def test_recorded_answers(payload: str, content: str, calls: list, finish: str, usage: tuple) -> None:
    answer = load(payload)
    out = to_chat_completion(answer, now=lambda: 1760000000)
    chat_completion(out)
    sdk = openai_over(json.dumps(out).encode(), content_type="application/json")
    r = sdk.chat.completions.create(model="m", messages=USER)
    msg = r.choices[0].message
    assert msg.content == content and r.choices[0].finish_reason == finish and r.model == answer["model"]
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls or []] == calls
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.prompt_tokens_details.cached_tokens) == usage
    assert r.created == 1760000000 and r.id == "chatcmpl-" + answer["id"].removeprefix("msg_")


@pytest.mark.parametrize(("stop", "finish"), [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
                                              ("tool_use", "tool_calls"), ("refusal", "content_filter"),
                                              ("pause_turn", "stop"), ("model_context_window_exceeded", "length"),
                                              (None, "stop")])
def test_finish_reasons(stop: str | None, finish: str) -> None:
    assert to_chat_completion({"content": [], "stop_reason": stop})["choices"][0]["finish_reason"] == finish


def test_errors() -> None:
    err = to_chat_error(529, raw("messages/error_overloaded.json"))
    assert err == {"error": {"message": "Overloaded", "type": "overloaded_error", "code": "overloaded_error",
                             "param": None}}
    with pytest.raises(openai.APIStatusError) as ei:
        openai_over(json.dumps(err).encode(), 529, "application/json").chat.completions.create(model="m",
                                                                                            messages=USER)
    assert ei.value.status_code == 529 and ei.value.body == err["error"]
    assert to_chat_error(502, b"bad gateway")["error"]["type"] == "api_error"


# -- streams ---------------------------------------------------------------------------------

def translate(blob: bytes, cuts: list[int] | None = None, include_usage: bool = True) -> bytes:
    t = MessagesToChatStream(include_usage, now=lambda: 1760000000)
    out, prev = [], 0
    for cut in sorted(set(cuts or [])) + [len(blob)]:
        out.append(t.feed(blob[prev:cut]))
        prev = cut
    return b"".join(out) + t.close()


STREAMS = [
    ("messages/stream_text.sse", "Paris is the capital of France.", [], "stop", (25, 12)),
    ("messages/stream_tool_use.sse", "I'll check the weather in Paris.",
     [("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", {"city": "Paris", "unit": "celsius"})], "tool_calls",
     (472 + 1024, 89)),
    ("messages/stream_thinking.sse", "27 * 453 = 12,231", [], "length", (40, 120)),   # thinking dropped
]


@pytest.mark.parametrize(("payload", "content", "calls", "finish", "usage"), STREAMS)
def test_recorded_streams_through_the_openai_sdk(payload: str, content: str, calls: list, finish: str,
                                                 usage: tuple) -> None:
    out = translate(raw(payload))
    chunks = chat_chunks(out)           # every chunk valid, ends with [DONE]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices == []
    text, args, ids, finished, final_usage = "", {}, {}, None, None
    for c in openai_over(out).chat.completions.create(model="m", messages=USER, stream=True,
                                                      stream_options={"include_usage": True}):
        final_usage = c.usage or final_usage
        if not c.choices:
            continue
        delta = c.choices[0].delta
        text += delta.content or ""
        for call in delta.tool_calls or []:
            if call.id:
                ids[call.index] = (call.id, call.function.name)
            args[call.index] = args.get(call.index, "") + (call.function.arguments or "")
        finished = c.choices[0].finish_reason or finished
    assert text == content and finished == finish
    assert [(*ids[i], json.loads(args[i])) for i in sorted(ids)] == calls
    assert (final_usage.prompt_tokens, final_usage.completion_tokens) == usage


def test_usage_chunk_only_when_asked() -> None:
    out = translate(raw("messages/stream_text.sse"), include_usage=False)
    assert all(c.usage is None and c.choices for c in chat_chunks(out))


@pytest.mark.parametrize("payload", [s[0] for s in STREAMS])
def test_every_split_point_gives_the_same_bytes(payload: str) -> None:
    blob = raw(payload)
    whole = translate(blob)
    for i in range(len(blob)):
        assert translate(blob, [i]) == whole, f"split at {i}"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2100), max_size=30))
def test_any_chunking_gives_the_same_bytes(cuts: list[int]) -> None:
    blob = raw("messages/stream_tool_use.sse")
    assert translate(blob, cuts) == translate(blob)


def test_error_event_becomes_a_chat_error_the_sdk_raises() -> None:
    out = translate(raw("messages/stream_error.sse"))
    assert out.rstrip().splitlines()[-1].startswith(b'data: {"error"') and b"[DONE]" not in out
    got = []
    with pytest.raises(openai.APIError, match="Overloaded"):
        for chunk in openai_over(out).chat.completions.create(model="m", messages=USER, stream=True):
            got.append(chunk.choices[0].delta.content if chunk.choices else None)
    assert "Par" in got


def test_a_cut_stream_ends_with_an_error_never_a_clean_end() -> None:
    blob = raw("messages/stream_text.sse")
    t = MessagesToChatStream(True)
    out = t.feed(blob[: len(blob) // 2]) + t.close()
    assert b'"stream_interrupted"' in out and b"[DONE]" not in out
    t = MessagesToChatStream(True)
    out = t.feed(blob[:200]) + t.fail("upstream stream timed out")
    assert b"upstream stream timed out" in out and t.feed(blob[200:]) == b"" and t.close() == b""


def test_usage_is_what_the_provider_reported() -> None:
    t = MessagesToChatStream()
    t.feed(raw("messages/stream_tool_use.sse"))
    assert t.usage is not None and (t.usage.input, t.usage.output, t.usage.cached_input) == (
        472 + 1024, 89, 1024)
