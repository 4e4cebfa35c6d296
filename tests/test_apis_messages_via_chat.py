"""An Anthropic Messages caller served by a chat provider: request Messages -> chat,
answer chat -> Messages, errors, and the chat SSE -> Anthropic event stream, checked
against recorded payloads and consumed by the real anthropic SDK."""

from __future__ import annotations

import json

import pytest
from anthropic.types.shared import ErrorResponse
from hypothesis import given, settings
from hypothesis import strategies as st

from routecar.apis.messages_via_chat import to_chat, to_message, to_messages_error
from routecar.apis.messages_via_chat_stream import ChatToMessagesStream
from routecar.errors import BadRequest
from tests.apis_payloads import anthropic_events, anthropic_message, anthropic_over, load, raw, valid_request

USER = [{"role": "user", "content": "hi"}]
B64 = "iVBORw0KGgo="


def test_recorded_request() -> None:
    req = valid_request("chat", to_chat(load("messages/request_full.json"), "gpt-4.1"))
    assert req["model"] == "gpt-4.1"
    assert req["messages"] == [
        {"role": "system", "content": "You are a weather assistant.\nAnswer in one sentence."},
        {"role": "user", "content": "What is the weather like in Paris?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [   # the thinking block is dropped
            {"id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees, light rain"},
        {"role": "user", "content": [
            {"type": "text", "text": "And what do these show?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + load(
                "messages/request_full.json")["messages"][2]["content"][2]["source"]["data"]}},
            {"type": "image_url", "image_url": {
                "url": "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg"}}]},
    ]
    schema = load("messages/request_full.json")["tools"][0]["input_schema"]
    assert req["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city", "parameters": schema}}]
    rest = {k: v for k, v in req.items() if k not in ("model", "messages", "tools")}
    assert rest == {"max_tokens": 1024, "temperature": 0.3, "top_p": 0.9, "stop": ["\n\nHuman:", "END"],
                    "tool_choice": "auto", "parallel_tool_calls": False, "stream": True,
                    "stream_options": {"include_usage": True}, "user": "user-4711"}   # top_k: dropped


@pytest.mark.parametrize(("body", "expected"), [
    ({"system": "Be brief.", "messages": USER},
     {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]},
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/jpeg", "data": B64}}]}]},
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
         "url": f"data:image/jpeg;base64,{B64}"}}]}]}),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                   {"role": "user", "content": [
                       {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "x"},
                                                                               {"type": "text", "text": "y"}]},
                       {"type": "tool_result", "tool_use_id": "t2", "content": "z", "is_error": True}]}]},
     {"messages": [{"role": "assistant", "content": None, "tool_calls": [
         {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "t1", "content": "x\ny"},
         {"role": "tool", "tool_call_id": "t2", "content": "z"}]}),
    ({"messages": USER, "tools": [{"name": "f"}], "tool_choice": {"type": "any"}},
     {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
      "tool_choice": "required"}),
    ({"messages": USER, "tools": [{"name": "f"}], "tool_choice": {"type": "tool", "name": "f"}},
     {"tool_choice": {"type": "function", "function": {"name": "f"}}}),
    ({"messages": USER, "tools": [{"name": "f"}], "tool_choice": {"type": "none"}}, {"tool_choice": "none"}),
    ({"messages": USER, "max_tokens": 5, "stream": False, "temperature": 1, "top_k": 3}, {"max_tokens": 5,
                                                                                       "temperature": 1}),
    ({"messages": USER, "metadata": {"user_id": 7}}, {}),
])
def test_request_cases(body: dict, expected: dict) -> None:
    req = to_chat(body, "m")
    got = {k: v for k, v in req.items() if k != "model"}
    if "messages" not in expected:
        got.pop("messages")
    got = {k: v for k, v in got.items() if k in expected or k not in ("tools",)}
    assert got == expected


@pytest.mark.parametrize(("body", "message"), [
    ({"messages": "hi"}, "messages: expected a list of messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role: expected 'user' or 'assistant'"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
     "messages[0].content[0]: content block type 'document' cannot be sent to this model"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
     "messages[0].content[0].source: only base64 and url images can be sent to this model"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                  "content": [{"type": "image", "source": {}}]}]}]},
     "messages[0].content[0].content[0]: only text blocks can be sent to this model"),
    ({"system": 5, "messages": []}, "system: expected a string or a list of text blocks"),
])
def test_untranslatable_requests_are_clear_errors(body: dict, message: str) -> None:
    with pytest.raises(BadRequest) as ei:
        to_chat(body, "m")
    assert ei.value.status == 400 and ei.value.message.startswith(message)


@pytest.mark.parametrize(("payload", "content", "stop", "usage"), [
    ("chat/answer_text.json", [{"type": "text", "text": "Paris is the capital of France."}], "end_turn",
     {"input_tokens": 24, "output_tokens": 8, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}),
    ("chat/answer_tool_calls.json",
     [{"type": "tool_use", "id": "call_Wq3nVb8KxT5mPz2L", "name": "get_weather",
       "input": {"city": "Paris", "unit": "celsius"}},
      {"type": "tool_use", "id": "call_Hd7rYc1NsQ4jGk9F", "name": "get_weather",
       "input": {"city": "Lyon", "unit": "celsius"}}], "tool_use",
     {"input_tokens": 72, "output_tokens": 52, "cache_read_input_tokens": 2048, "cache_creation_input_tokens": 0}),
    ("chat/answer_length.json", [{"type": "text", "text": "Once upon a time, in a land"}], "max_tokens",
     {"input_tokens": 12, "output_tokens": 8, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}),
])
def test_recorded_answers(payload: str, content: list, stop: str, usage: dict) -> None:
    answer = load(payload)
    msg = to_message(answer)
    anthropic_message(msg)
    assert (msg["content"], msg["stop_reason"], msg["usage"]) == (content, stop, usage)
    assert msg["model"] == answer["model"] and msg["id"] == "msg_" + answer["id"].removeprefix("chatcmpl-")
    # and the real SDK reads it as an app would
    sdk = anthropic_over(json.dumps(msg).encode(), content_type="application/json")
    assert sdk.messages.create(model="m", max_tokens=9, messages=USER).stop_reason == stop


@pytest.mark.parametrize(("finish", "stop"), [("stop", "end_turn"), ("length", "max_tokens"),
                                              ("tool_calls", "tool_use"), ("function_call", "tool_use"),
                                              ("content_filter", "refusal"), (None, "end_turn"), ("odd", "end_turn")])
def test_stop_reasons(finish: str | None, stop: str) -> None:
    answer = {"choices": [{"message": {"content": "x"}, "finish_reason": finish}]}
    assert to_message(answer)["stop_reason"] == stop


def test_odd_answers_do_not_crash() -> None:
    msg = to_message({"choices": [{"message": {"content": "", "refusal": "I can't.", "tool_calls": [
        {"id": "c", "function": {"name": "f", "arguments": "{not json"}}, "junk"]}}]})
    assert msg["content"] == [{"type": "text", "text": "I can't."},
                              {"type": "tool_use", "id": "c", "name": "f", "input": {"_raw_arguments": "{not json"}}]
    assert msg["stop_reason"] == "refusal"
    assert to_message({})["content"] == [] and to_message({"choices": "x"})["usage"]["output_tokens"] == 0


@pytest.mark.parametrize(("status", "body", "kind", "message"), [
    (429, json.dumps({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}),
     "rate_limit_error", "Rate limit reached"),
    (400, json.dumps({"error": {"message": "context too long", "type": "invalid_request_error"}}),
     "invalid_request_error", "context too long"),
    (503, "<html>Service Unavailable</html>", "api_error", "<html>Service Unavailable</html>"),
    (529, json.dumps({"error": "Overloaded"}), "overloaded_error", "Overloaded"),
])
def test_errors(status: int, body: str, kind: str, message: str) -> None:
    err = to_messages_error(status, body.encode())
    parsed = ErrorResponse.model_validate(err)
    assert (parsed.error.type, parsed.error.message) == (kind, message)


# -- streams ---------------------------------------------------------------------------------

def translate(blob: bytes, cuts: list[int] | None = None) -> bytes:
    t = ChatToMessagesStream()
    out, prev = [], 0
    for cut in sorted(set(cuts or [])) + [len(blob)]:
        out.append(t.feed(blob[prev:cut]))
        prev = cut
    return b"".join(out) + t.close()


STREAMS = [
    ("chat/stream_text.sse", [{"type": "text", "text": "Paris is the capital of France."}], "end_turn",
     (31, 9, 0)),
    ("chat/stream_tool_calls.sse", [
        {"type": "tool_use", "id": "call_Wq3nVb8KxT5mPz2L", "name": "get_weather",
         "input": {"city": "Paris", "unit": "celsius"}},
        {"type": "tool_use", "id": "call_Hd7rYc1NsQ4jGk9F", "name": "get_weather",
         "input": {"city": "Lyon", "unit": "celsius"}}], "tool_use", (72, 52, 2048)),
    ("chat/stream_length.sse", [{"type": "text", "text": "Once upon a time, in a land"}], "max_tokens", (12, 8, 0)),
]


@pytest.mark.parametrize(("payload", "content", "stop", "usage"), STREAMS)
def test_recorded_streams_through_the_anthropic_sdk(payload: str, content: list, stop: str, usage: tuple) -> None:
    out = translate(raw(payload))
    evs = anthropic_events(out)        # every event valid, event names = types
    kinds = [e.type for e in evs]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == len(content)
    with anthropic_over(out).messages.stream(model="m", max_tokens=9, messages=USER) as stream:
        final = stream.get_final_message()
    blocks = [b.model_dump(include={"type", "text", "id", "name", "input"}) for b in final.content]
    assert blocks == content
    streamed = "".join(e.delta.text for e in evs if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert streamed == "".join(b.get("text", "") for b in content)
    assert final.stop_reason == stop
    u = final.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_input_tokens) == usage


@pytest.mark.parametrize("payload", [s[0] for s in STREAMS])
def test_every_split_point_gives_the_same_bytes(payload: str) -> None:
    blob = raw(payload)
    whole = translate(blob)
    for i in range(0, len(blob), 7):
        assert translate(blob, [i]) == whole, f"split at {i}"
    assert translate(blob, list(range(len(blob)))) == whole


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=4600), max_size=30))
def test_any_chunking_gives_the_same_bytes(cuts: list[int]) -> None:
    blob = raw("chat/stream_tool_calls.sse")
    assert translate(blob, cuts) == translate(blob)


def test_error_chunk_becomes_an_anthropic_error_event() -> None:
    out = translate(raw("chat/stream_error.sse"))
    names = [line for line in out.decode().splitlines() if line.startswith("event: ")]
    assert names[-1] == "event: error" and "message_stop" not in out.decode()
    last = json.loads(out.decode().strip().splitlines()[-1][6:])
    assert ErrorResponse.model_validate(last).error.message.startswith("The server had an error")
    with pytest.raises(Exception, match="The server had an error"):
        with anthropic_over(out).messages.stream(model="m", max_tokens=9, messages=USER) as stream:
            stream.get_final_message()


def test_a_cut_stream_ends_with_an_error_never_a_clean_stop() -> None:
    blob = raw("chat/stream_text.sse")
    t = ChatToMessagesStream()
    out = t.feed(blob[: len(blob) // 2]) + t.close()      # EOF before finish_reason
    assert out.rstrip().splitlines()[-2] == b"event: error" and b"message_stop" not in out
    t = ChatToMessagesStream()
    out = t.feed(blob[:300]) + t.fail("upstream stream broke: ClientPayloadError")
    assert b"upstream stream broke" in out and t.feed(blob[300:]) == b"" and t.close() == b""


def test_done_without_a_finish_reason_still_closes_every_block() -> None:
    blob = b"".join(line + b"\n\n" for line in raw("chat/stream_text.sse").split(b"\n\n")
                    if line and b'"finish_reason":"stop"' not in line)
    kinds = [e.type for e in anthropic_events(translate(blob))]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 1
    assert kinds[-2:] == ["message_delta", "message_stop"]
    with anthropic_over(translate(blob)).messages.stream(model="m", max_tokens=9, messages=USER) as stream:
        assert stream.get_final_message().stop_reason == "end_turn"


def test_clean_eof_after_finish_reason_without_done_completes() -> None:
    blob = raw("chat/stream_length.sse").replace(b"data: [DONE]\r\n\r\n", b"")
    out = translate(blob)
    assert out.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


def test_garbage_and_oversized_events_end_in_an_error_event() -> None:
    assert b"event: error" in translate(b"data: {not json}\n\n")
    assert b"event: error" in translate(b"data: [1, 2]\n\n")
    t = ChatToMessagesStream()
    out = b"".join(t.feed(b"data: " + b"x" * (1 << 20)) for _ in range(5))   # 5 MiB without a line end
    assert b"larger than" in out and out.count(b"event: error") == 1


def test_usage_is_what_the_provider_reported() -> None:
    t = ChatToMessagesStream()
    t.feed(raw("chat/stream_tool_calls.sse"))
    assert t.usage is not None and (t.usage.input, t.usage.output) == (2120, 52)
