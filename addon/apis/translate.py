"""Translations between API shapes: one table, pure functions, no I/O.

    (api_in, api_out)        caller's shape -> provider's shape
    ("messages", "chat")     an Anthropic SDK app on an OpenAI-compatible provider
    ("chat", "messages")     an OpenAI SDK app on a Messages-only provider
    ("responses", "chat")    a stateless Responses request on a chat provider

`api_for(api_in, provider_apis, native_only)` picks the shape a request is sent
in: its own when the provider speaks it, else the first the provider speaks
that a translation reaches (never for a request with native-only features).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .base import ApiName, error_message
from .chat_via_messages import to_chat_completion, to_chat_error, to_messages
from .chat_via_messages_stream import MessagesToChatStream
from .messages_via_chat import to_chat as messages_to_chat
from .messages_via_chat import to_message, to_messages_error
from .messages_via_chat_stream import ChatToMessagesStream
from .responses_via_chat import to_chat as responses_to_chat
from .responses_via_chat import to_response
from .responses_via_chat_stream import ChatToResponsesStream
from .stream import StreamTranslator

Body = Mapping[str, Any]


@dataclass(frozen=True)
class Translation:
    """How a request in `api_in` is sent to a provider speaking `api_out`, and its answer brought back.

    request(body, model)      -> the provider's request body (BadRequest if it cannot be carried)
    answer(answer, request)   -> the provider's whole answer in the caller's shape
    error(status, body)       -> the provider's error body in the caller's shape
    stream(request)           -> a StreamTranslator for the provider's SSE stream
    """

    api_in: ApiName
    api_out: ApiName
    request: Callable[[Body, str], dict[str, Any]]
    answer: Callable[[Body, Body], dict[str, Any]]
    error: Callable[[int, bytes], dict[str, Any]]
    stream: Callable[[Body], StreamTranslator]


def _openai_error(status: int, body: bytes) -> dict[str, Any]:
    """A chat provider's error for a Responses caller: the same OpenAI error object."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": error_message(body), "type": kind, "code": None, "param": None}}


def _include_usage(request: Body) -> bool:
    options = request.get("stream_options")
    return isinstance(options, Mapping) and options.get("include_usage") is True


TRANSLATIONS: Mapping[tuple[ApiName, ApiName], Translation] = {
    ("messages", "chat"): Translation(
        "messages", "chat", messages_to_chat,
        lambda answer, request: to_message(answer),
        to_messages_error,
        lambda request: ChatToMessagesStream()),
    ("chat", "messages"): Translation(
        "chat", "messages", to_messages,
        lambda answer, request: to_chat_completion(answer),
        to_chat_error,
        lambda request: MessagesToChatStream(_include_usage(request))),
    ("responses", "chat"): Translation(
        "responses", "chat", responses_to_chat,
        lambda answer, request: to_response(answer, request, int(time.time())),
        _openai_error,
        lambda request: ChatToResponsesStream(request)),
}


def translation(api_in: ApiName, api_out: ApiName) -> Translation | None:
    return TRANSLATIONS.get((api_in, api_out))


def api_for(api_in: ApiName, provider_apis: Iterable[ApiName], native_only: bool = False) -> ApiName | None:
    """The shape to send a request in to a provider speaking `provider_apis` (None: it cannot be sent)."""
    apis = tuple(provider_apis)
    if api_in in apis:
        return api_in
    if native_only:
        return None
    return next((out for out in apis if (api_in, out) in TRANSLATIONS), None)


def translated_body(tr: Translation, status: int, body: bytes, request: Mapping[str, Any]) -> bytes:
    """A provider's whole answer (2xx) or error in the caller's shape."""
    if status >= 400:
        return json.dumps(tr.error(status, body)).encode()
    return json.dumps(tr.answer(json.loads(body), request)).encode()


def json_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers of a body routecar rewrote: its own content type (the length is recomputed)."""
    return [(k, v) for k, v in headers if k.lower() not in ("content-type", "content-length")] + [
        ("content-type", "application/json")]
