"""Loading the recorded payloads (tests/payloads/) and checking wire data with the SDKs' types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import httpx2   # what both SDKs are built on here
import openai
from anthropic.types import Message, RawMessageStreamEvent, message_create_params
from openai.types.chat import ChatCompletion, ChatCompletionChunk, completion_create_params
from openai.types.responses import Response, ResponseStreamEvent, response_create_params
from pydantic import TypeAdapter

from routecar.apis.sse import SSEDecoder, SSEEvent

PAYLOADS = Path(__file__).with_name("payloads")

ANTHROPIC_EVENT = TypeAdapter(RawMessageStreamEvent)
RESPONSES_EVENT = TypeAdapter(ResponseStreamEvent)
REQUESTS = {
    "chat": TypeAdapter(completion_create_params.CompletionCreateParams),
    "messages": TypeAdapter(message_create_params.MessageCreateParams),
    "responses": TypeAdapter(response_create_params.ResponseCreateParams),
}


def _force(value: Any) -> Any:
    """pydantic validates `Iterable` fields lazily: walk everything so that all of it is checked."""
    if isinstance(value, dict):
        return {k: _force(v) for k, v in value.items()}
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return value
    return [_force(v) for v in value]


def valid_request(api: str, body: Any) -> Any:
    """`body` checked against the SDK's request parameter types for shape `api` (raises if not)."""
    return _force(REQUESTS[api].validate_python(body))


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


def _transport(status: int, blob: bytes, content_type: str) -> httpx2.MockTransport:
    return httpx2.MockTransport(lambda request: httpx2.Response(status, headers={"content-type": content_type},
                                                                content=blob))


def anthropic_over(blob: bytes, status: int = 200, content_type: str = "text/event-stream") -> anthropic.Anthropic:
    """The real anthropic SDK, answered with `blob` (no network): what an app would make of it."""
    return anthropic.Anthropic(api_key="k", base_url="http://sdk.test", max_retries=0,
                               http_client=httpx2.Client(transport=_transport(status, blob, content_type)))


def openai_over(blob: bytes, status: int = 200, content_type: str = "text/event-stream") -> openai.OpenAI:
    """The real openai SDK, answered with `blob` (no network)."""
    return openai.OpenAI(api_key="k", base_url="http://sdk.test/v1", max_retries=0,
                         http_client=httpx2.Client(transport=_transport(status, blob, content_type)))
