"""OpenAI Responses: `POST …/responses`, answers as a `response` object or typed SSE
events (`response.created` … `response.completed`, each with a `sequence_number`;
no `[DONE]`).

A Responses request is translatable to chat only when it is stateless: no
`previous_response_id`, `conversation`, `background`, stored `prompt`, item
references, OpenAI built-in tools (web search, file search, code interpreter,
computer use, image generation, MCP, shell, ...) or file inputs. `native_only`
names what a request uses of these; such a request may only go to a provider
that speaks Responses natively.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import RoutecarError
from ..policy.request import RequestProfile, content_size
from .base import (JsonShapeBase, ApiName, Usage, count, estimate_tokens, int_field, json_size,
                   model_of, path_matches)
from .sse import encode_typed

# Request fields that need OpenAI's server-side state.
STATEFUL_FIELDS = ("previous_response_id", "conversation", "prompt")
# Input item types a chat provider can be given (translated); reasoning items are dropped.
TRANSLATABLE_ITEMS = frozenset({"message", "function_call", "function_call_output", "reasoning"})
TEXT_PARTS = frozenset({"input_text", "output_text", "refusal", "text"})   # images: in user messages only
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def usage_from(obj: Any) -> Usage | None:
    if not isinstance(obj, Mapping) or count(obj.get("input_tokens")) is None:
        return None
    details = obj.get("input_tokens_details")
    cached = count(details.get("cached_tokens")) if isinstance(details, Mapping) else None
    return Usage(int_field(obj, "input_tokens"), int_field(obj, "output_tokens"), cached)


def _pick(event: Mapping[str, Any], seen: Usage | None) -> Usage | None:
    if event.get("type") in TERMINAL_EVENTS:
        response = event.get("response")
        return (usage_from(response.get("usage")) if isinstance(response, Mapping) else None) or seen
    return seen


def _item_size(item: Mapping[str, Any]) -> tuple[int, bool]:
    kind = item.get("type", "message")
    if kind == "message" or "role" in item:
        return content_size(item.get("content"))
    if kind == "function_call":
        return len(str(item.get("name", ""))) + len(str(item.get("arguments", ""))), False
    if kind == "function_call_output":
        output = item.get("output")
        return content_size(output) if isinstance(output, (str, list)) else (0, False)
    return json_size(item), False


def input_items(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The request's `input` as items (a string is one user message)."""
    raw = body.get("input")
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    return [i for i in raw if isinstance(i, Mapping)] if isinstance(raw, list) else []


class ResponsesShape(JsonShapeBase):
    usage_from = staticmethod(usage_from)
    pick = staticmethod(_pick)

    name: ApiName = "responses"
    suffix = "responses"
    default_headers: Mapping[str, str] = {}

    def matches(self, path: str) -> bool:
        return path_matches(path, self.suffix)

    def profile(self, body: Mapping[str, Any]) -> RequestProfile:
        chars, vision, n = 0, False, 0
        instructions = body.get("instructions")
        if isinstance(instructions, str) and instructions:
            chars += len(instructions)
            n += 1
        for item in input_items(body):
            c, img = _item_size(item)
            chars += c
            vision |= img
            n += 1
        tools = body.get("tools")
        chars += json_size(tools)
        return RequestProfile(model_of(body), estimate_tokens(chars, n), count(body.get("max_output_tokens")),
                              bool(tools), vision, body.get("stream") is True)

    def native_only(self, body: Mapping[str, Any]) -> tuple[str, ...]:
        reasons = [f for f in STATEFUL_FIELDS if body.get(f) is not None]
        if body.get("background") is True:
            reasons.append("background")
        tools = body.get("tools")
        for tool in tools if isinstance(tools, list) else ():
            if isinstance(tool, Mapping) and tool.get("type") != "function":
                reasons.append(f"tool:{tool.get('type')}")
        choice = body.get("tool_choice")
        if isinstance(choice, Mapping) and choice.get("type") != "function":
            reasons.append(f"tool_choice:{choice.get('type')}")
        for item in input_items(body):
            kind = item.get("type", "message")
            if kind not in TRANSLATABLE_ITEMS:
                reasons.append(f"input:{kind}")
                continue
            content = item.get("content") if kind == "message" else item.get("output")
            user = kind == "message" and item.get("role", "user") == "user"
            for part in content if isinstance(content, list) else ():
                ptype = part.get("type") if isinstance(part, Mapping) else None
                if ptype == "input_image" and user:
                    if not isinstance(part.get("image_url"), str):
                        reasons.append("content:input_image:file_id")
                elif ptype not in TEXT_PARTS:
                    reasons.append(f"content:{ptype}" if user else f"content:{kind}:{ptype}")
        return tuple(dict.fromkeys(reasons))

    def error_body(self, err: RoutecarError) -> dict[str, Any]:
        return err.to_openai()

    def stream_error(self, message: str) -> bytes:
        """The Responses `error` event. Its `sequence_number` is not known to the relay
        (it did not count the provider's events): 0."""
        return encode_typed({"type": "error", "code": "stream_interrupted", "message": message, "param": None,
                             "sequence_number": 0})


RESPONSES = ResponsesShape()
