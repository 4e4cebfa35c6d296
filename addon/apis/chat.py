"""OpenAI Chat Completions: `POST …/chat/completions`, answers as `chat.completion`
or SSE `data:` chunks ending with `data: [DONE]`.

The native shape of most providers. Usage is the answer's `usage` object; in a
stream, the chunk that carries a non-null `usage` (sent only when the request
asked for `stream_options.include_usage`). A stream is complete at `data: [DONE]`;
a chunk `{"error": …}` is the provider reporting an error in it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ..errors import RoutecarError
from ..policy.request import RequestProfile, content_size
from ..usage import TokenUsage
from .base import (JsonShapeBase, ApiName, StreamEnd, UsageReader, count, estimate_tokens, json_size, model_of,
                   path_matches, unknown_fields)

# Content part types a chat request may carry that no other shape can take.
_NATIVE_PARTS = frozenset({"input_audio", "file", "audio"})
# Request fields the chat -> Messages translation carries, or drops knowingly (sampling and
# bookkeeping hints with no Messages equivalent that change no routing guarantee: `seed`, the
# penalties, `store`, `metadata`, `service_tier`, `reasoning_effort`, `prediction`, ...), or that
# `native_only` already names. Any other field (`logit_bias`, a new feature) needs a chat provider.
TRANSLATABLE_FIELDS = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "tools",
    "tool_choice", "parallel_tool_calls", "response_format", "stream", "stream_options", "user",
    "n", "logprobs", "top_logprobs", "modalities", "audio", "functions", "function_call", "web_search_options",
    "seed", "presence_penalty", "frequency_penalty", "store", "metadata", "service_tier", "reasoning_effort",
    "prediction", "safety_identifier", "prompt_cache_key", "verbosity"})


def usage_from(obj: Any) -> TokenUsage | None:
    """A chat `usage` object (`prompt_tokens`, `completion_tokens`, details)."""
    return TokenUsage.from_reported(obj) if isinstance(obj, Mapping) and "prompt_tokens" in obj else None


def _pick(event: Mapping[str, Any], seen: TokenUsage | None) -> TokenUsage | None:
    return usage_from(event.get("usage")) or seen


def _ends(event: Mapping[str, Any]) -> StreamEnd | None:
    """An error chunk ends the stream in error; a chunk giving a choice its `finish_reason`
    completes the answer, as it does for the chat translators: a provider that never sends
    `[DONE]`, or a connection lost between the last answer chunk and it, is not a truncation."""
    if event.get("error") is not None:
        return StreamEnd.ERROR
    choices = event.get("choices")
    if isinstance(choices, list) and any(isinstance(c, Mapping) and c.get("finish_reason") for c in choices):
        return StreamEnd.COMPLETE
    return None


class ChatShape(JsonShapeBase):
    pick = staticmethod(_pick)
    ends = staticmethod(_ends)
    watch = re.compile(r'"(?:usage"\s*:\s*\{|error"\s*:|finish_reason"\s*:\s*")')
    done = "[DONE]"

    name: ApiName = "chat"
    suffix = "chat/completions"
    default_headers: Mapping[str, str] = {}

    def matches(self, path: str) -> bool:
        return path_matches(path, self.suffix)

    def profile(self, body: Mapping[str, Any]) -> RequestProfile:
        """Estimate from the messages: ~4 characters per token, +4 per message."""
        chars, vision, n = 0, False, 0
        messages = body.get("messages")
        if isinstance(messages, list):
            for m in messages:
                if isinstance(m, Mapping):
                    c, img = content_size(m.get("content"))
                    chars += c
                    vision |= img
                    n += 1
        tools = body.get("tools") or body.get("functions")
        chars += json_size(tools)
        max_tokens = count(body.get("max_completion_tokens", body.get("max_tokens")))
        return RequestProfile(model_of(body), estimate_tokens(chars, n), max_tokens, bool(tools), vision,
                              body.get("stream") is True)

    def native_only(self, body: Mapping[str, Any]) -> tuple[str, ...]:
        """What only a chat provider can serve: audio, several choices, logprobs, files,
        legacy `functions`, provider-side web search, JSON mode without a schema, and any
        request field a translation does not know (`field:NAME`)."""
        reasons: list[str] = []
        modalities = body.get("modalities")
        if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
            reasons.append("audio")
        n = body.get("n")
        if n is not None and n != 1:
            reasons.append("n")
        if body.get("logprobs") or body.get("top_logprobs") is not None:
            reasons.append("logprobs")
        if body.get("functions") is not None or body.get("function_call") is not None:
            reasons.append("functions")
        if body.get("web_search_options") is not None:
            reasons.append("web_search_options")
        fmt = body.get("response_format")
        if isinstance(fmt, Mapping) and fmt.get("type") == "json_object":
            reasons.append("response_format:json_object")   # Messages can only be given a schema
        reasons += unknown_fields(body, TRANSLATABLE_FIELDS)
        messages = body.get("messages")
        for m in messages if isinstance(messages, list) else ():
            if not isinstance(m, Mapping):
                continue
            if m.get("role") == "function":
                reasons.append("message:function")
            content = m.get("content")
            for part in content if isinstance(content, list) else ():
                if isinstance(part, Mapping) and part.get("type") in _NATIVE_PARTS:
                    reasons.append(f"content:{part['type']}")
        return tuple(dict.fromkeys(reasons))

    def error_body(self, err: RoutecarError) -> dict[str, Any]:
        return err.to_openai()

    def stream_error(self, message: str, after: UsageReader | None = None) -> bytes:
        """An in-stream error the OpenAI SDK raises as APIError: never a silent clean end."""
        err = {"error": {"message": message, "type": "upstream_error", "code": "stream_interrupted",
                         "param": None}}
        return b"data: " + json.dumps(err).encode() + b"\n\n"


CHAT = ChatShape()
