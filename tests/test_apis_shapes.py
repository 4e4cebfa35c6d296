"""The API-shape protocol for chat, Responses and Messages: path, profile, native_only,
for_entry, usage (whole and streamed), errors in each shape's format."""

from __future__ import annotations

import json

import pytest
from anthropic.types.shared import ErrorResponse
from openai.types.responses import ResponseErrorEvent

from routecar.apis import SHAPES, ApiShape, StreamEnd, shape_for
from routecar.usage import TokenUsage
from routecar.apis.chat import CHAT
from routecar.apis.messages import MESSAGES
from routecar.apis.responses import RESPONSES
from routecar.errors import NoCandidate, UpstreamFailed
from routecar.policy import RequestProfile
from tests.apis_payloads import events, load, raw

PNG = "data:image/png;base64,iVBORw0KGgo="


def test_every_shape_implements_the_protocol() -> None:
    for name, shape in SHAPES.items():
        assert isinstance(shape, ApiShape)   # members present (mypy checks the signatures)
        assert shape.name == name


@pytest.mark.parametrize(("path", "shape"), [
    ("/v1/chat/completions", "chat"),
    ("/openai/v1/chat/completions?api-version=1", "chat"),
    ("/chat/completions", "chat"),
    ("/v1/responses", "responses"),
    ("/v1/messages", "messages"),
    ("/v1/messages?beta=true", "messages"),
    ("/v1/chat/completions/", None),          # exact suffix: no trailing slash
    ("/v1/xchat/completions", None),          # whole segments only
    ("/v1/messages/count_tokens", None),
    ("/v1/messages/batches", None),
    ("/v1/responses/resp_123", None),
    ("/v1/responses/resp_123/input_items", None),
    ("/v1/completions", None),
    ("/v1/models", None),
])
def test_paths(path: str, shape: str | None) -> None:
    found = shape_for(path)
    assert (found.name if found else None) == shape


CHAT_BODIES = [
    {"model": "m", "messages": [{"role": "user", "content": "hello"}]},
    {"messages": [{"role": "system", "content": "x" * 400}, {"role": "user", "content": [
        {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": PNG}}]}], "stream": True},
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50, "max_completion_tokens": 70,
     "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    {"model": 3, "messages": "nope", "max_tokens": True, "stream": "yes"},
    {"messages": [None, {"role": "user"}, {"content": [None, {"type": "input_image"}]}], "max_tokens": -1},
    {"messages": [], "functions": [{"name": "legacy"}], "max_completion_tokens": None, "max_tokens": 9},
]


@pytest.mark.parametrize("body", CHAT_BODIES)
def test_chat_profile_is_todays_profile(body: dict) -> None:
    # The engine uses RequestProfile.from_body until phase 2 switches it to CHAT.profile.
    assert CHAT.profile(body) == RequestProfile.from_body(body)


# One conversation in each shape: "Be brief." + "Hello there", 100 tokens out -> the same estimate.
SAME = {
    "chat": {"model": "m", "max_tokens": 100, "messages": [{"role": "system", "content": "Be brief."},
                                                            {"role": "user", "content": "Hello there"}]},
    "messages": {"model": "m", "max_tokens": 100, "system": "Be brief.",
                 "messages": [{"role": "user", "content": "Hello there"}]},
    "responses": {"model": "m", "max_output_tokens": 100, "instructions": "Be brief.", "input": "Hello there"},
}


@pytest.mark.parametrize("name", sorted(SAME))
def test_one_conversation_one_estimate_in_every_shape(name: str) -> None:
    assert SHAPES[name].profile(SAME[name]) == RequestProfile("m", 20 // 4 + 2 * 4 + 3, 100, False, False, False)


@pytest.mark.parametrize(("shape", "body", "expected"), [
    # each shape reads its own max-output field, tools, images and stream flag
    ("messages", load("messages/request_full.json"), dict(max_tokens=1024, tools=True, vision=True, stream=True)),
    ("responses", load("responses/request_full.json"), dict(max_tokens=300, tools=True, vision=True, stream=True)),
    ("chat", load("chat/request_full.json"), dict(max_tokens=300, tools=True, vision=True, stream=True)),
    ("messages", {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                              "content": [{"type": "image", "source": {}}]}]}]},
     dict(max_tokens=None, tools=False, vision=True, stream=False)),
    ("responses", {"input": [{"type": "function_call_output", "call_id": "c", "output": "x" * 40}],
                   "max_tokens": 5}, dict(max_tokens=None, tools=False, vision=False, stream=False)),
])
def test_profile_fields(shape: str, body: dict, expected: dict) -> None:
    p = SHAPES[shape].profile(body)
    assert {k: getattr(p, k) for k in expected} == expected
    assert p.prompt_tokens > 3


def test_tool_calls_and_results_count_in_the_prompt() -> None:
    bare = {"messages": [{"role": "user", "content": "hi"}]}
    with_tools = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "get_weather", "input": {"city": "x" * 400}}]}]}
    assert MESSAGES.profile(with_tools).prompt_tokens > MESSAGES.profile(bare).prompt_tokens + 100
    calls = {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "y" * 400}]}
    assert RESPONSES.profile(calls).prompt_tokens > 100


@pytest.mark.parametrize(("shape", "body", "reasons"), [
    ("responses", {"input": "hi"}, ()),
    ("responses", load("responses/request_full.json"), ()),
    ("responses", {"input": "hi", "previous_response_id": "resp_1", "conversation": "conv_1", "background": True,
                   "prompt": {"id": "pmpt_1"}}, ("previous_response_id", "conversation", "prompt", "background")),
    ("responses", {"input": "hi", "tools": [{"type": "web_search"}, {"type": "function", "name": "f"},
                                            {"type": "file_search", "vector_store_ids": []}, {"type": "mcp"}]},
     ("tool:web_search", "tool:file_search", "tool:mcp")),
    ("responses", {"input": "hi", "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}},
     ("tool_choice:allowed_tools",)),
    ("responses", {"input": [{"type": "item_reference", "id": "msg_1"}, {"type": "web_search_call", "id": "w"},
                             {"role": "user", "content": [{"type": "input_file", "file_id": "f"},
                                                          {"type": "input_image", "file_id": "file_1"}]},
                             {"type": "function_call_output", "call_id": "c",
                              "output": [{"type": "input_image", "image_url": PNG}]}]},
     ("input:item_reference", "input:web_search_call", "content:input_file", "content:input_image:file_id",
      "content:function_call_output:input_image")),
    ("responses", {"input": "hi", "background": False, "store": True, "previous_response_id": None}, ()),
    ("messages", load("messages/request_full.json"), ()),
    ("messages", {"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"},
                                            {"name": "f", "input_schema": {}}, {"type": "custom", "name": "g"},
                                            {"type": "bash_20250124", "name": "bash"}],
                  "mcp_servers": [{"url": "https://x"}], "container": "c1"},
     ("mcp_servers", "container", "tool:web_search_20250305", "tool:bash_20250124")),
    # fields a translation does not know (beta features among them) are never dropped silently
    ("messages", {"messages": [], "context_management": {"edits": []}, "output_config": {"format": {}},
                  "inference_geo": "eu", "mcp_servers": [], "fallbacks": None, "top_k": 5, "thinking": {},
                  "cache_control": {"type": "ephemeral"}, "service_tier": "auto", "metadata": {"user_id": "u"}},
     ("field:context_management", "field:output_config", "field:inference_geo")),
    ("messages", {"messages": [{"role": "user", "content": [
        {"type": "document", "source": {}}, {"type": "image", "source": {"type": "file", "file_id": "f"}},
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {}}]},
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "ok"}]}]}]},
     ("content:document", "content:image:file", "content:tool_result:non_text")),
    ("chat", load("chat/request_full.json"), ()),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "input_audio"}, {"type": "file"}]},
                           {"role": "function", "content": "x"}], "n": 2, "logprobs": True, "audio": {},
              "functions": [], "web_search_options": {}, "response_format": {"type": "json_object"}},
     ("audio", "n", "logprobs", "functions", "web_search_options", "response_format:json_object",
      "content:input_audio", "content:file", "message:function")),
    ("chat", {"messages": [], "n": 1, "logprobs": False, "response_format": {"type": "json_schema"}}, ()),
    ("chat", {"messages": [], "logit_bias": {"50256": -100}, "seed": 7, "presence_penalty": 0.5,
              "store": False, "metadata": {"a": "b"}, "reasoning_effort": "low", "brand_new": 1, "gone": None},
     ("field:logit_bias", "field:brand_new")),
    ("responses", {"input": "hi", "include": ["reasoning.encrypted_content"], "store": False, "truncation": "auto",
                   "text": {"verbosity": "low"}, "brand_new": {}}, ("field:include", "field:brand_new")),
])
def test_native_only(shape: str, body: dict, reasons: tuple[str, ...]) -> None:
    assert SHAPES[shape].native_only(body) == reasons


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_for_entry_sets_the_model_and_keeps_the_rest(name: str) -> None:
    body = {"model": "asked", "stream": True, "x": [1]}
    out = SHAPES[name].for_entry(body, "chosen")
    assert out == {"model": "chosen", "stream": True, "x": [1]} and body["model"] == "asked"


def U(prompt: int, completion: int, cached: int = 0, cache_write: int = 0) -> TokenUsage:
    """Usage in the one type every shape reports (prompt counts cached input and cache writes)."""
    return TokenUsage(input=prompt, cached_input=cached, output=completion, cache_write=cache_write)


@pytest.mark.parametrize(("shape", "payload", "usage"), [
    ("chat", "chat/answer_text.json", U(24, 8)),
    ("chat", "chat/answer_tool_calls.json", U(2120, 52, 2048)),
    ("chat", "chat/answer_length.json", U(12, 8)),
    ("messages", "messages/answer_text.json", U(25, 11)),
    ("messages", "messages/answer_tool_use.json", U(472 + 100 + 1024, 89, 1024, cache_write=100)),
    ("messages", "messages/answer_stop_sequence.json", U(14, 7)),
    ("responses", "responses/answer_text.json", U(21, 8)),
])
def test_usage_of_an_answer(shape: str, payload: str, usage: TokenUsage) -> None:
    assert SHAPES[shape].usage(raw(payload)) == usage


@pytest.mark.parametrize("blob", [b"", b"not json", b"[1]", b'{"usage": {"x": 1}}', b'{"usage": null}'])
def test_usage_of_a_bad_answer_is_none(blob: bytes) -> None:
    for shape in SHAPES.values():
        assert shape.usage(blob) is None


@pytest.mark.parametrize(("shape", "payload", "usage", "end"), [
    ("chat", "chat/stream_text.sse", U(31, 9), StreamEnd.COMPLETE),
    ("chat", "chat/stream_tool_calls.sse", U(2120, 52, 2048), StreamEnd.COMPLETE),
    ("chat", "chat/stream_length.sse", U(12, 8), StreamEnd.COMPLETE),
    ("chat", "chat/stream_error.sse", None, StreamEnd.ERROR),
    ("messages", "messages/stream_text.sse", U(25, 12), StreamEnd.COMPLETE),
    ("messages", "messages/stream_tool_use.sse", U(472 + 1024, 89, 1024), StreamEnd.COMPLETE),
    ("messages", "messages/stream_thinking.sse", U(40, 120), StreamEnd.COMPLETE),
    ("messages", "messages/stream_error.sse", U(25, 1), StreamEnd.ERROR),   # what message_start said
    ("responses", "responses/stream_text.sse", U(21, 8), StreamEnd.COMPLETE),
])
def test_usage_and_end_of_a_stream_fed_byte_by_byte(shape: str, payload: str, usage: TokenUsage | None,
                                                    end: StreamEnd) -> None:
    blob = raw(payload)
    reader = SHAPES[shape].usage_reader()
    for i in range(len(blob)):
        reader.feed(blob[i:i + 1])
    reader.close()
    assert reader.usage == usage and reader.end is end


def test_usage_reader_survives_garbage() -> None:
    reader = MESSAGES.usage_reader()
    reader.feed(b'event: message_start\ndata: {"usage": not json}\n\n' + b"data: " + b"x" * (5 << 20))
    reader.feed(raw("messages/stream_text.sse"))
    assert reader.usage is None   # an oversized event stops reading; nothing raises


def test_errors_in_each_shape() -> None:
    err = NoCandidate([{"id": "a/b", "reason": "r"}], fingerprint="pol_123456")
    assert CHAT.error_body(err) == RESPONSES.error_body(err) == err.to_openai()
    body = MESSAGES.error_body(err)
    parsed = ErrorResponse.model_validate(body)
    assert (parsed.type, parsed.error.type, parsed.error.message) == ("error", "invalid_request_error", err.message)
    assert body["error"]["code"] == "no_candidate" and body["error"]["dropped"] == [{"id": "a/b", "reason": "r"}]
    assert MESSAGES.error_body(UpstreamFailed([]))["error"]["type"] == "api_error"


def test_stream_errors_are_what_each_sdk_raises_on() -> None:
    [chat] = events(CHAT.stream_error("cut"))
    assert chat.event is None and json.loads(chat.data)["error"]["message"] == "cut"
    [msg] = events(MESSAGES.stream_error("cut"))
    assert msg.event == "error" and ErrorResponse.model_validate(msg.json()).error.message == "cut"
    [resp] = events(RESPONSES.stream_error("cut"))
    assert resp.event == "error" and ResponseErrorEvent.model_validate(resp.json()).message == "cut"


def test_default_headers() -> None:
    assert MESSAGES.default_headers == {"anthropic-version": "2023-06-01"}
    assert CHAT.default_headers == RESPONSES.default_headers == {}
