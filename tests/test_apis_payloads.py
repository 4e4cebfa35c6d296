"""The recorded payloads (tests/payloads/) are what the official SDKs parse: they cannot
drift from the real wire formats the translation tests are driven by."""

from __future__ import annotations

import json

import pytest
from anthropic.types.shared import ErrorResponse

from tests.apis_payloads import (PAYLOADS, anthropic_events, anthropic_message, chat_chunks, chat_completion, load,
                                 raw, responses_events, responses_response)


@pytest.mark.parametrize("name", sorted(p.name for p in (PAYLOADS / "chat").glob("answer_*.json")))
def test_chat_answers(name: str) -> None:
    assert chat_completion(load(f"chat/{name}")).choices


@pytest.mark.parametrize("name", ["stream_text.sse", "stream_tool_calls.sse", "stream_length.sse"])
def test_chat_streams(name: str) -> None:
    chunks = chat_chunks(raw(f"chat/{name}"))
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


@pytest.mark.parametrize("name", sorted(p.name for p in (PAYLOADS / "messages").glob("answer_*.json")))
def test_messages_answers(name: str) -> None:
    assert anthropic_message(load(f"messages/{name}")).content


@pytest.mark.parametrize("name", ["stream_text.sse", "stream_tool_use.sse", "stream_thinking.sse"])
def test_messages_streams(name: str) -> None:
    evs = anthropic_events(raw(f"messages/{name}"))
    assert (evs[0].type, evs[-1].type) == ("message_start", "message_stop")


def test_messages_error() -> None:
    assert ErrorResponse.model_validate(load("messages/error_overloaded.json")).error.type == "overloaded_error"


def test_responses_answer_and_stream() -> None:
    assert responses_response(load("responses/answer_text.json")).output_text == "Paris is the capital of France."
    evs = responses_events(raw("responses/stream_text.sse"))
    assert (evs[0].type, evs[-1].type) == ("response.created", "response.completed")


def test_recorded_streams_carry_whole_json_arguments() -> None:
    """Streams split tool arguments anywhere; put together they are JSON objects."""
    args: dict[int, str] = {}
    for c in chat_chunks(raw("chat/stream_tool_calls.sse")):
        for call in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            args[call.index] = args.get(call.index, "") + (call.function.arguments or "")
    assert [json.loads(a) for a in args.values()] == [{"city": "Paris", "unit": "celsius"},
                                                      {"city": "Lyon", "unit": "celsius"}]
    partial = "".join(e.delta.partial_json for e in anthropic_events(raw("messages/stream_tool_use.sse"))
                      if e.type == "content_block_delta" and e.delta.type == "input_json_delta")
    assert json.loads(partial) == {"city": "Paris", "unit": "celsius"}
