"""What a provider said about an answer: token usage, model, id, finish reasons.

    TokenUsage       the reported usage in one spelling for every API shape (what apis/ reads, pricing takes)
    ResponseFacts    usage + response model + id + finish reasons (what traces, metrics and spans show)
    response_facts   a whole JSON answer or the tail of an SSE stream -> ResponseFacts

`TokenUsage.from_reported` reads the three spellings providers use:

    OpenAI chat       prompt_tokens, completion_tokens, prompt_tokens_details.cached_tokens,
                      completion_tokens_details.reasoning_tokens
    OpenAI Responses  input_tokens, output_tokens, input_tokens_details.cached_tokens,
                      output_tokens_details.reasoning_tokens
    Anthropic         input_tokens (uncached only), cache_read_input_tokens,
                      cache_creation_input_tokens, output_tokens

`TokenUsage` is the one usage type: the API shapes (addon/apis/) read a stream's
usage into it as the stream passes, whole (their usage readers), and pricing takes
it. `response_facts` reads the rest of what an answer says (model, id, finish
reasons) from a whole answer or a stream's last bytes. Nothing here is content: no
message text is read or kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _count(value: Any) -> int:
    """A token count as reported, or 0 for anything that is not a non-negative integer."""
    if type(value) is int:   # the common case, first
        return value if value > 0 else 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return 0
    return max(0, int(value))


def _detail(usage: Mapping[str, Any], key: str, field: str) -> int:
    details = usage.get(key)
    return _count(details.get(field)) if isinstance(details, Mapping) else 0


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens of one call. `input` counts every input token (cached ones included) and
    `output` every output token (reasoning included); the parts never exceed the whole."""

    input: int = 0
    cached_input: int = 0     # part of `input` read from the provider's prompt cache
    output: int = 0
    reasoning: int = 0        # part of `output` spent on reasoning
    cache_write: int = 0      # part of `input` written to the cache (Anthropic)

    def __post_init__(self) -> None:
        i, c, o, r, w = self.input, self.cached_input, self.output, self.reasoning, self.cache_write
        if (type(i) is type(c) is type(o) is type(r) is type(w) is int
                and 0 <= c and 0 <= w and c + w <= i and 0 <= r <= o):
            return   # the common case: a consistent report
        # Providers report these separately; an inconsistent report is clamped, never trusted
        # to make a negative count (a negative price) downstream.
        for name in ("input", "cached_input", "output", "reasoning", "cache_write"):
            object.__setattr__(self, name, _count(getattr(self, name)))
        object.__setattr__(self, "cached_input", min(self.cached_input, self.input))
        object.__setattr__(self, "cache_write", min(self.cache_write, self.input - self.cached_input))
        object.__setattr__(self, "reasoning", min(self.reasoning, self.output))

    @classmethod
    def from_reported(cls, usage: Any) -> TokenUsage | None:
        """The usage object of a chat, Responses or Messages answer; None if it is not one."""
        if not isinstance(usage, Mapping):
            return None
        if "prompt_tokens" in usage or "completion_tokens" in usage:
            # (a top-level cached_tokens / reasoning_tokens: the trace's own spelling, to_trace())
            return cls(_count(usage.get("prompt_tokens")),
                       _detail(usage, "prompt_tokens_details", "cached_tokens") or _count(usage.get("cached_tokens")),
                       _count(usage.get("completion_tokens")),
                       _detail(usage, "completion_tokens_details", "reasoning_tokens")
                       or _count(usage.get("reasoning_tokens")))
        if "input_tokens" in usage or "output_tokens" in usage:
            # Anthropic counts cache reads/writes outside input_tokens; Responses has no such keys.
            read = _count(usage.get("cache_read_input_tokens"))
            write = _count(usage.get("cache_creation_input_tokens"))
            return cls(_count(usage.get("input_tokens")) + read + write,
                       read or _detail(usage, "input_tokens_details", "cached_tokens"),
                       _count(usage.get("output_tokens")),
                       _detail(usage, "output_tokens_details", "reasoning_tokens"), write)
        return None

    def to_trace(self) -> dict[str, int]:
        """The trace record's `usage` (decisions columns prompt/completion/cached/reasoning_tokens)."""
        return {"prompt_tokens": self.input, "completion_tokens": self.output,
                "cached_tokens": self.cached_input, "reasoning_tokens": self.reasoning}

    def to_dict(self) -> dict[str, int]:
        return {"input": self.input, "cached_input": self.cached_input, "output": self.output,
                "reasoning": self.reasoning, "cache_write": self.cache_write}


@dataclass(frozen=True, slots=True)
class ResponseFacts:
    """Metadata of an answer (never its content)."""

    usage: TokenUsage | None = None
    model: str | None = None
    response_id: str | None = None
    finish_reasons: tuple[str, ...] = ()


_USAGE_KEY = re.compile(rb'"usage"\s*:\s*')
_FINISH = re.compile(rb'"(?:finish_reason|stop_reason)"\s*:\s*"([A-Za-z0-9_.-]{1,64})"')
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,200})"')
_RESPONSE_OBJECT = re.compile(rb'"object"\s*:\s*"response"')
_STATUS = re.compile(rb'"status"\s*:\s*"(completed|incomplete|failed|cancelled)"')
_DECODER = json.JSONDecoder()
_USAGE_WINDOW = 4096


def _last_usage(blob: bytes) -> Any:
    """The stream's usage: the last `"usage": {...}` object in `blob`, with the keys it lacks
    taken from earlier ones (Anthropic streams report input tokens in `message_start` and
    output tokens in `message_delta`). An SSE tail may have cut the earlier ones."""
    merged: dict[str, Any] = {}
    end, found = len(blob), 0
    while found < 4 and (at := blob.rfind(b'"usage"', 0, end)) >= 0:
        end = at
        m = _USAGE_KEY.match(blob, at)
        if m is None:
            continue
        try:   # a usage object is small: decode a bounded window, not the rest of the answer
            value, _ = _DECODER.raw_decode(blob[m.end():m.end() + _USAGE_WINDOW].decode("utf-8", "replace"))
        except ValueError:
            continue
        if isinstance(value, Mapping):
            found += 1
            for key, v in value.items():
                merged.setdefault(key, v)
    return merged or None


def _text(m: re.Match[bytes] | None) -> str | None:
    return m.group(1).decode("utf-8", "replace") if m else None


def response_facts(blob: bytes | None) -> ResponseFacts:
    """Facts from a whole JSON answer or the last bytes of an SSE stream, without parsing the
    answer: keys are found by pattern (inside a JSON string every quote is escaped, so
    `"model": "` only matches the structure), and only the usage object is decoded."""
    if not blob:
        return ResponseFacts()
    reasons = [m.group(1).decode("utf-8", "replace") for m in _FINISH.finditer(blob)]
    if _RESPONSE_OBJECT.search(blob):   # OpenAI Responses: the response's status says how it ended
        reasons += [m.group(1).decode() for m in _STATUS.finditer(blob)]
    models = _MODEL.findall(blob)
    return ResponseFacts(TokenUsage.from_reported(_last_usage(blob)),
                         models[-1].decode("utf-8", "replace") if models else None,
                         _text(_ID.search(blob)), tuple(dict.fromkeys(reasons)))
