"""Anthropic Messages: `POST …/messages`, answers as a `message` object or SSE events
named by their type (`message_start`, `content_block_start|delta|stop`,
`message_delta`, `message_stop`, `ping`, `error`).

Requests need `anthropic-version` (sent as 2023-06-01 when the app sent none).
Usage: `input_tokens` excludes cache reads and writes, which Anthropic reports
apart; `message_delta` usage is cumulative and may restate input tokens.
Errors: `{"type": "error", "error": {"type": ..., "message": ...}}`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from ..errors import RoutecarError
from ..policy.request import RequestProfile, content_size
from ..usage import TokenUsage
from .base import (JsonShapeBase, ApiName, StreamEnd, UsageReader, count, estimate_tokens, json_size, model_of,
                   path_matches, unknown_fields)
from .sse import encode

ANTHROPIC_VERSION = "2023-06-01"

# Content blocks a chat provider can be given (translated); any other needs Anthropic.
TRANSLATABLE_BLOCKS = frozenset({"text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking"})
# Request fields a translation carries, or drops knowingly (`top_k`, `thinking`, `cache_control`,
# `service_tier`: they change no routing guarantee and have no equivalent). Any other field the app
# sent (a beta feature such as `context_management`, `output_config`, `inference_geo`) needs a
# Messages provider: a translation would drop it silently.
TRANSLATABLE_FIELDS = frozenset({"model", "messages", "system", "max_tokens", "temperature", "top_p", "top_k",
                                 "stop_sequences", "stream", "tools", "tool_choice", "metadata", "thinking",
                                 "cache_control", "service_tier"})
_NATIVE_FIELDS = ("mcp_servers", "container")

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 504: "timeout_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    """Anthropic's error `type` for an HTTP status."""
    return _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_object(status: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message, **extra}}


_INPUT_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def usage_from(obj: Any, seen: TokenUsage | None = None) -> TokenUsage | None:
    """An Anthropic `usage` object; the input counts it lacks keep `seen`'s (a `message_delta`
    restates output tokens, and input tokens only sometimes)."""
    if not isinstance(obj, Mapping) or count(obj.get("output_tokens")) is None:
        return seen
    usage = TokenUsage.from_reported(obj)
    if seen is None or usage is None or any(count(obj.get(k)) is not None for k in _INPUT_KEYS):
        return usage
    return dataclasses.replace(usage, input=seen.input, cached_input=seen.cached_input,
                               cache_write=seen.cache_write)


def _pick(event: Mapping[str, Any], seen: TokenUsage | None) -> TokenUsage | None:
    if event.get("type") == "message_start":
        message = event.get("message")
        return usage_from(message.get("usage") if isinstance(message, Mapping) else None, seen)
    if event.get("type") == "message_delta":
        return usage_from(event.get("usage"), seen)
    return seen


def _ends(event: Mapping[str, Any]) -> StreamEnd | None:
    kind = event.get("type")
    return StreamEnd.COMPLETE if kind == "message_stop" else StreamEnd.ERROR if kind == "error" else None


def _block_size(block: Mapping[str, Any]) -> tuple[int, bool]:
    kind = block.get("type")
    if kind == "tool_use":
        return len(str(block.get("name", ""))) + json_size(block.get("input")), False
    if kind == "tool_result":
        return content_size(block.get("content"))
    if kind == "thinking":
        return len(str(block.get("thinking", ""))), False
    return content_size([block])


class MessagesShape(JsonShapeBase):
    pick = staticmethod(_pick)
    ends = staticmethod(_ends)
    watch = re.compile(r'"(?:usage"\s*:\s*\{|type"\s*:\s*"(?:message_stop|error)")')

    name: ApiName = "messages"
    suffix = "messages"
    default_headers: Mapping[str, str] = {"anthropic-version": ANTHROPIC_VERSION}

    def matches(self, path: str) -> bool:
        return path_matches(path, self.suffix)

    def profile(self, body: Mapping[str, Any]) -> RequestProfile:
        chars, vision, n = 0, False, 0
        system = body.get("system")
        if system:
            chars += content_size(system)[0]
            n += 1
        messages = body.get("messages")
        for m in messages if isinstance(messages, list) else ():
            if not isinstance(m, Mapping):
                continue
            n += 1
            content = m.get("content")
            sizes = ([_block_size(b) for b in content if isinstance(b, Mapping)] if isinstance(content, list)
                     else [content_size(content)])
            for c, img in sizes:
                chars += c
                vision |= img
        tools = body.get("tools")
        chars += json_size(tools)
        return RequestProfile(model_of(body), estimate_tokens(chars, n), count(body.get("max_tokens")),
                              bool(tools), vision, body.get("stream") is True)

    def native_only(self, body: Mapping[str, Any]) -> tuple[str, ...]:
        """What only Anthropic can serve: its server and built-in tools (web search, code
        execution, bash, text editor, computer use), MCP servers, containers, documents,
        images given by file id, images inside tool results, and any request field a
        translation does not know (`field:NAME`)."""
        reasons: list[str] = []
        for key in _NATIVE_FIELDS:
            if body.get(key):
                reasons.append(key)
        reasons += unknown_fields(body, TRANSLATABLE_FIELDS | frozenset(_NATIVE_FIELDS))
        tools = body.get("tools")
        for tool in tools if isinstance(tools, list) else ():
            if isinstance(tool, Mapping) and tool.get("type") not in (None, "custom"):
                reasons.append(f"tool:{tool['type']}")
        messages = body.get("messages")
        for m in messages if isinstance(messages, list) else ():
            content = m.get("content") if isinstance(m, Mapping) else None
            for block in content if isinstance(content, list) else ():
                if not isinstance(block, Mapping):
                    continue
                kind = block.get("type")
                if kind not in TRANSLATABLE_BLOCKS:
                    reasons.append(f"content:{kind}")
                elif kind == "image" and (block.get("source") or {}).get("type") not in ("base64", "url"):
                    reasons.append("content:image:file")
                elif kind == "tool_result" and isinstance(block.get("content"), list) and any(
                        isinstance(p, Mapping) and p.get("type") != "text" for p in block["content"]):
                    reasons.append("content:tool_result:non_text")
        return tuple(dict.fromkeys(reasons))

    def error_body(self, err: RoutecarError) -> dict[str, Any]:
        """Anthropic's error format; routecar's `code` and details ride along in `error`
        (the one mapping, `RoutecarError.to_anthropic`)."""
        return err.to_anthropic()

    def stream_error(self, message: str, after: UsageReader | None = None) -> bytes:
        return encode(error_object(502, message), "error")


MESSAGES = MessagesShape()
