"""An OpenAI Responses caller served by a chat provider (stateless requests): request
Responses -> chat, chat answer -> response object, chat SSE -> the Responses typed event
sequence, checked against recorded payloads and consumed by the real openai SDK."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routecar.apis.responses_via_chat import to_chat, to_response
from routecar.apis.responses_via_chat_stream import ChatToResponsesStream
from routecar.apis.translate import TRANSLATIONS
from routecar.errors import BadRequest
from tests.apis_payloads import load, openai_over, raw, responses_events, responses_response, valid_request

ANT = "https://upload.wikimedia.org/wikipedia/commons/a/a7/Camponotus_flavomarginatus_ant.jpg"
FN = {"type": "function", "name": "f", "parameters": {"type": "object"}}


def ids() -> object:
    counter = itertools.count()
    return lambda prefix: f"{prefix}_{next(counter)}"


def test_recorded_request() -> None:
    body = load("responses/request_full.json")
    valid_request("responses", body)
    req = valid_request("chat", to_chat(body, "mistral-small"))
    assert req["messages"] == [
        {"role": "system", "content": "You are a weather assistant."},          # instructions
        {"role": "system", "content": "Answer in one sentence."},               # developer
        {"role": "user", "content": [
            {"type": "text", "text": "What is the weather like in Paris? And what is in this picture?"},
            {"type": "image_url", "image_url": {"url": ANT, "detail": "auto"}}]},
        # the reasoning item is dropped; the assistant's text and calls are one turn
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_Wq3nVb8KxT5mPz2L", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_Hd7rYc1NsQ4jGk9F", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'}}]},
        {"role": "tool", "tool_call_id": "call_Wq3nVb8KxT5mPz2L", "content": "15 degrees, light rain"},
        {"role": "tool", "tool_call_id": "call_Hd7rYc1NsQ4jGk9F", "content": "18 degrees, sunny"},
        {"role": "user", "content": "Thanks. Summarise."},
    ]
    tool = body["tools"][0]
    assert req["tools"] == [{"type": "function", "function": {k: tool[k] for k in ("name", "description",
                                                                                   "parameters", "strict")}}]
    fmt = body["text"]["format"]
    rest = {k: v for k, v in req.items() if k not in ("model", "messages", "tools")}
    assert rest == {"max_tokens": 300, "temperature": 0.7, "top_p": 0.9, "parallel_tool_calls": False,
                    "user": "user-4711", "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                    "response_format": {"type": "json_schema", "json_schema": {
                        "name": "summary", "schema": fmt["schema"], "strict": True}},
                    "reasoning_effort": "low", "stream": True, "stream_options": {"include_usage": True}}


@pytest.mark.parametrize(("body", "key", "expected"), [
    ({"input": "hi"}, "messages", [{"role": "user", "content": "hi"}]),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]}, "messages",
     [{"role": "assistant", "content": None, "tool_calls": [
         {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]),
    ({"input": [{"role": "assistant", "content": [{"type": "output_text", "text": "a"},
                                                  {"type": "output_text", "text": "b"}]}]},
     "messages", [{"role": "assistant", "content": "ab"}]),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "a"},
                                             {"type": "input_text", "text": "b"}]}]},
     "messages", [{"role": "user", "content": "a\nb"}]),
    ({"input": "x", "tool_choice": "required", "tools": [FN]}, "tool_choice", "required"),
    ({"input": "x", "text": {"format": {"type": "json_object"}}}, "response_format", {"type": "json_object"}),
    ({"input": "x", "top_logprobs": 3}, "top_logprobs", 3),
    ({"input": "x", "safety_identifier": "s", "prompt_cache_key": "k"}, "prompt_cache_key", "k"),
])
def test_request_cases(body: dict, key: str, expected: object) -> None:
    assert to_chat(body, "m")[key] == expected


def test_what_a_chat_request_does_not_get() -> None:
    req = to_chat({"input": "x", "store": True, "metadata": {"a": "b"}, "text": {"format": {"type": "text"}},
                   "truncation": "auto", "include": ["reasoning.encrypted_content"], "stream": False}, "m")
    assert req == {"model": "m", "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize(("body", "message"), [
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0]: only function tools"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]: input item type 'item_reference'"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0]: content part type 'input_file'"),
    ({"input": [{"role": "system", "content": [{"type": "input_image", "image_url": ANT}]}]},
     "input[0].content: only the user's messages can carry images"),
    ({"input": "x", "tool_choice": {"type": "allowed_tools", "tools": []}}, "tool_choice: "),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role: 'tool' cannot be sent"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": 5}]},
     "input[0].output: expected a string or a list"),
])
def test_untranslatable_requests_are_clear_errors(body: dict, message: str) -> None:
    with pytest.raises(BadRequest) as ei:
        to_chat(body, "m")
    assert ei.value.message.startswith(message)


@pytest.mark.parametrize(("payload", "status", "text", "calls", "usage"), [
    ("chat/answer_text.json", "completed", "Paris is the capital of France.", [], (24, 8, 32)),
    ("chat/answer_tool_calls.json", "completed", "", [("call_Wq3nVb8KxT5mPz2L", "get_weather"),
                                                      ("call_Hd7rYc1NsQ4jGk9F", "get_weather")], (2120, 52, 2172)),
    ("chat/answer_length.json", "incomplete", "Once upon a time, in a land", [], (12, 8, 20)),
])
def test_recorded_answers(payload: str, status: str, text: str, calls: list, usage: tuple) -> None:
    request = {"model": "m", "input": "x", "instructions": "Be brief.", "tools": [FN], "max_output_tokens": 9}
    out = to_response(load(payload), request, created=1760000000, new_id=ids())
    responses_response(out)
    r = openai_over(json.dumps(out).encode(), content_type="application/json").responses.create(model="m", input="x")
    assert (r.status, r.output_text) == (status, text)
    assert [(o.call_id, o.name) for o in r.output if o.type == "function_call"] == calls
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == usage
    assert (r.instructions, r.max_output_tokens, r.store, r.tools[0].name) == ("Be brief.", 9, False, "f")
    if status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.input_tokens_details.cached_tokens == (2048 if calls else 0)


# -- streams ---------------------------------------------------------------------------------

REQUEST = {"model": "m", "input": "What is the weather in Paris?", "stream": True, "tools": [FN]}


def translate(blob: bytes, cuts: list[int] | None = None, max_answer: int = 1 << 20) -> bytes:
    t = ChatToResponsesStream(REQUEST, new_id=ids(), now=lambda: 1760000000, max_answer=max_answer)
    out, prev = [], 0
    for cut in sorted(set(cuts or [])) + [len(blob)]:
        out.append(t.feed(blob[prev:cut]))
        prev = cut
    return b"".join(out) + t.close()


TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added"] + ["response.output_text.delta"] * 4 + [
    "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
CALL_EVENTS = ["response.created", "response.in_progress",
               "response.output_item.added"] + ["response.function_call_arguments.delta"] * 4 + [
    "response.output_item.added"] + ["response.function_call_arguments.delta"] * 3 + [
    "response.function_call_arguments.done", "response.output_item.done",
    "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
STREAMS = [
    ("chat/stream_text.sse", TEXT_EVENTS, "completed", "Paris is the capital of France.", [], (31, 9)),
    ("chat/stream_tool_calls.sse", CALL_EVENTS, "completed", "",
     [("call_Wq3nVb8KxT5mPz2L", {"city": "Paris", "unit": "celsius"}),
      ("call_Hd7rYc1NsQ4jGk9F", {"city": "Lyon", "unit": "celsius"})], (2120, 52)),
    ("chat/stream_length.sse", None, "incomplete", "Once upon a time, in a land", [], (12, 8)),
]


@pytest.mark.parametrize(("payload", "kinds", "status", "text", "calls", "usage"), STREAMS)
def test_recorded_streams_through_the_openai_sdk(payload: str, kinds: list | None, status: str, text: str,
                                                 calls: list, usage: tuple) -> None:
    out = translate(raw(payload))
    evs = responses_events(out)    # every event valid, sequence numbers 0, 1, 2, ...
    if kinds is not None:
        assert [e.type for e in evs] == kinds
    assert evs[-1].type == ("response.completed" if status == "completed" else "response.incomplete")
    with openai_over(out).responses.stream(model="m", input="x") as stream:
        seen = [e.type for e in stream]
        final = stream.get_final_response() if status == "completed" else evs[-1].response
    assert seen[-1] == evs[-1].type
    assert (final.status, final.output_text, final.model) == (status, text, evs[0].response.model)
    assert [(o.call_id, json.loads(o.arguments)) for o in final.output if o.type == "function_call"] == calls
    assert (final.usage.input_tokens, final.usage.output_tokens) == usage
    assert evs[0].response.status == "in_progress" and evs[0].response.tools[0].name == "f"
    # what streamed adds up to what the done events and the final response restate
    deltas = "".join(e.delta for e in evs if e.type == "response.output_text.delta")
    assert deltas == text == "".join(e.text for e in evs if e.type == "response.output_text.done")
    for o in final.output:
        if o.type == "function_call":
            streamed = "".join(e.delta for e in evs if e.type == "response.function_call_arguments.delta"
                               and e.item_id == o.id)
            done = [e.arguments for e in evs if e.type == "response.function_call_arguments.done" and e.item_id == o.id]
            assert streamed == o.arguments and done == [o.arguments]


@pytest.mark.parametrize("payload", [s[0] for s in STREAMS])
def test_every_split_point_gives_the_same_bytes(payload: str) -> None:
    blob = raw(payload)
    whole = translate(blob)
    for i in range(0, len(blob), 5):
        assert translate(blob, [i]) == whole, f"split at {i}"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=4600), max_size=30))
def test_any_chunking_gives_the_same_bytes(cuts: list[int]) -> None:
    blob = raw("chat/stream_tool_calls.sse")
    assert translate(blob, cuts) == translate(blob)


def _last(out: bytes) -> dict:
    return responses_events(out)[-1].model_dump()


def test_errors_cuts_and_limits_end_in_an_error_event() -> None:
    last = _last(translate(raw("chat/stream_error.sse")))
    assert last["type"] == "error" and last["message"].startswith("The server had an error")
    blob = raw("chat/stream_text.sse")
    t = ChatToResponsesStream(REQUEST)
    assert _last(t.feed(blob[: len(blob) // 2]) + t.close())["type"] == "error"   # EOF before the end
    last = _last(translate(blob, max_answer=10))        # the answer must be restated: bounded
    assert last["type"] == "error" and "larger than 10 bytes" in last["message"]
    t = ChatToResponsesStream(REQUEST)
    out = t.feed(blob[:700]) + t.fail("upstream stream broke")
    assert _last(out)["message"] == "upstream stream broke" and t.close() == b"" and t.feed(blob) == b""


def test_the_translation_table_entry() -> None:
    tr = TRANSLATIONS[("responses", "chat")]
    assert tr.request({"input": "x"}, "m") == {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert tr.answer(load("chat/answer_text.json"), {"input": "x"})["output"][0]["content"][0]["text"] == (
        "Paris is the capital of France.")
    assert tr.error(429, b'{"error": {"message": "slow down"}}')["error"]["message"] == "slow down"
    assert b"response.completed" in tr.stream(REQUEST).feed(raw("chat/stream_text.sse"))
