"""Loading the recorded payloads (tests/payloads/) and checking wire data with the SDKs' types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anthropic.types import Message, RawMessageStreamEvent
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from routecar.apis.sse import SSEDecoder, SSEEvent

PAYLOADS = Path(__file__).with_name("payloads")

ANTHROPIC_EVENT = TypeAdapter(RawMessageStreamEvent)
RESPONSES_EVENT = TypeAdapter(ResponseStreamEvent)


def load(name: str) -> Any:
    return json.loads((PAYLOADS / name).read_text())


def raw(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def events(blob: bytes) -> list[SSEEvent]:
    dec = SSEDecoder()
    return dec.feed(blob) + dec.close()


def chat_chunks(blob: bytes) -> list[ChatCompletionChunk]:
    """Every chunk of a chat stream, validated (the stream must end with [DONE])."""
    evs = events(blob)
    assert evs and evs[-1].data == "[DONE]", "a chat stream ends with data: [DONE]"
    return [ChatCompletionChunk.model_validate(e.json()) for e in evs[:-1]]


def anthropic_events(blob: bytes) -> list[Any]:
    """Every event of a Messages stream, validated; each SSE `event:` name equals its type."""
    out = []
    for e in events(blob):
        data = e.json()
        assert e.event == data["type"], f"event name {e.event!r} != type {data['type']!r}"
        if data["type"] not in ("ping", "error"):
            out.append(ANTHROPIC_EVENT.validate_python(data))
    return out


def responses_events(blob: bytes) -> list[Any]:
    """Every event of a Responses stream, validated, with sequence numbers 0, 1, 2, ..."""
    evs = [RESPONSES_EVENT.validate_python(e.json()) for e in events(blob)]
    assert [e.sequence_number for e in evs] == list(range(len(evs)))
    return evs


def chat_completion(data: Any) -> ChatCompletion:
    return ChatCompletion.model_validate(data)


def anthropic_message(data: Any) -> Message:
    return Message.model_validate(data)


def responses_response(data: Any) -> Response:
    return Response.model_validate(data)
