"""What the fake providers' shapes (chat in provider.py, Messages, Responses) share:
token counts, splitting an answer into chunks, the scripted answer, cutting a connection."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web


def tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def split(text: str, n: int) -> list[str]:
    """Split text into exactly n non-empty pieces (padding with '.' if too short)."""
    n = max(1, n)
    if len(text) < n:
        text += "." * (n - len(text))
    size = len(text)
    return [text[i * size // n : (i + 1) * size // n] for i in range(n)]


def content_text(content: Any) -> str:
    """The text of a message's content in any shape (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def abort(request: web.Request) -> web.Response:
    """Drop the connection; nothing can be written any more (aiohttp drops this response quietly)."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)


@dataclass(frozen=True)
class Answer:
    """What a fake answers, whatever the shape: text, maybe one tool call, why it stopped."""

    model: str
    content: str
    tool_name: str | None = None
    tool_arguments: str = "{}"
    finish: str = "stop"            # chat vocabulary: stop, length, tool_calls, content_filter, stop_sequence
    prompt_tokens: int = 1

    @property
    def completion_tokens(self) -> int:
        return tokens(self.content + (self.tool_arguments if self.tool_name else ""))

    @classmethod
    def scripted(cls, name: str, body: Mapping[str, Any], rule: Mapping[str, Any], prompt: str) -> Answer:
        model = str(body.get("model", ""))
        content = str(rule.get("content", f"[fake:{name}] model={model} ok"))
        call = rule.get("tool_call")
        finish = str(rule.get("finish_reason", "tool_calls" if call else "stop"))
        if isinstance(call, Mapping):
            return cls(model, content, str(call.get("name", "tool")), json.dumps(call.get("arguments", {})), finish,
                       tokens(prompt))
        return cls(model, content, finish=finish, prompt_tokens=tokens(prompt))
