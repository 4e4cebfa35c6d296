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

import re
from collections.abc import Mapping
from typing import Any

from ..errors import RoutecarError
from ..policy.request import RequestProfile, content_size
from ..usage import TokenUsage
from .base import (JsonShapeBase, ApiName, SSEUsageReader, StreamEnd, UsageReader, count, estimate_tokens,
                   json_size, model_of, path_matches, unknown_fields)
from .sse import SSEEvent, encode_typed

# Request fields that need OpenAI's server-side state.
STATEFUL_FIELDS = ("previous_response_id", "conversation", "prompt")
# Input item types a chat provider can be given (translated); reasoning items are dropped.
TRANSLATABLE_ITEMS = frozenset({"message", "function_call", "function_call_output", "reasoning"})
TEXT_PARTS = frozenset({"input_text", "output_text", "refusal", "text"})   # images: in user messages only
# Request fields the Responses -> chat translation carries, or drops knowingly (`store`,
# `metadata`, `truncation`, `max_tool_calls`: bookkeeping, or about built-in tools, which are
# native-only anyway), or that `native_only` names. Any other (`include`, a new feature) needs
# a Responses provider.
TRANSLATABLE_FIELDS = frozenset({
    "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "parallel_tool_calls", "user",
    "safety_identifier", "prompt_cache_key", "service_tier", "tools", "tool_choice", "text", "reasoning",
    "top_logprobs", "stream", "stream_options", "store", "metadata", "truncation", "max_tool_calls", "background",
    *STATEFUL_FIELDS})
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def usage_from(obj: Any) -> TokenUsage | None:
    return TokenUsage.from_reported(obj) if isinstance(obj, Mapping) and "input_tokens" in obj else None


def _pick(event: Mapping[str, Any], seen: TokenUsage | None) -> TokenUsage | None:
    if event.get("type") in TERMINAL_EVENTS:
        response = event.get("response")
        return (usage_from(response.get("usage")) if isinstance(response, Mapping) else None) or seen
    return seen


def _ends(event: Mapping[str, Any]) -> StreamEnd | None:
    """`response.completed` / `response.incomplete` end a stream that did its work; `response.failed`
    and `error` are the provider reporting that it did not."""
    kind = event.get("type")
    if kind in ("response.completed", "response.incomplete"):
        return StreamEnd.COMPLETE
    return StreamEnd.ERROR if kind in ("response.failed", "error") else None


_WATCH = re.compile(r'"(?:usage"\s*:\s*\{|type"\s*:\s*"(?:response\.(?:completed|incomplete|failed)|error)")')
_SEQUENCE = re.compile(r'"sequence_number"\s*:\s*(\d+)')


class ResponsesReader(SSEUsageReader):
    """Also keeps the last event seen, so that an error event routecar adds to a native stream
    continues its sequence (read only then: nothing more per event than keeping it)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        super().__init__(_pick, _ends, _WATCH)
        self._last = ""

    def _event(self, ev: SSEEvent) -> None:
        super()._event(ev)
        self._last = ev.data

    @property
    def last_sequence(self) -> int | None:
        """The `sequence_number` of the last event seen (None before any, or if it had none)."""
        m = _SEQUENCE.search(self._last)
        return int(m.group(1)) if m is not None else None


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
    pick = staticmethod(_pick)
    ends = staticmethod(_ends)
    watch = _WATCH

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
        reasons += unknown_fields(body, TRANSLATABLE_FIELDS)
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

    def usage_reader(self) -> ResponsesReader:
        return ResponsesReader()

    def stream_error(self, message: str, after: UsageReader | None = None) -> bytes:
        """The Responses `error` event; after the events `after` saw, the next `sequence_number`."""
        last = after.last_sequence if isinstance(after, ResponsesReader) else None
        return encode_typed({"type": "error", "code": "stream_interrupted", "message": message, "param": None,
                             "sequence_number": 0 if last is None else last + 1})


RESPONSES = ResponsesShape()
