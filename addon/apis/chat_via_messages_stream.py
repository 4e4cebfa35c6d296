"""An Anthropic Messages event stream as OpenAI chat SSE chunks.

    message_start                  -> chunk with delta {role: assistant, content: ""}
    content_block_start(tool_use)  -> delta.tool_calls [{index k, id, type, function {name, arguments: ""}}]
    text_delta                     -> delta.content
    input_json_delta               -> delta.tool_calls [{index k, function {arguments}}]
    thinking / signature / citations deltas, ping
                                   -> nothing (a chat caller did not ask for them)
    message_delta                  -> chunk with finish_reason (stop_reason mapped)
    message_stop                   -> usage chunk (choices: [], when the caller asked for
                                      stream_options.include_usage), then data: [DONE]
    event: error, a cut, or an EOF before message_stop
                                   -> data: {"error": {...}} (the OpenAI SDK raises it)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from .base import obj
from .chat import CHAT
from .chat_via_messages import completion_id, finish_reason, usage_to_chat
from .messages import usage_from
from .sse import DONE, SSEEvent, encode
from .stream import TRUNCATED, SSETranslator, StreamTruncated, error_text, event_json


class MessagesToChatStream(SSETranslator):
    def __init__(self, include_usage: bool = False, now: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._include_usage = include_usage
        self._base: dict[str, Any] = {"id": completion_id(None), "object": "chat.completion.chunk",
                                      "created": int(now()), "model": ""}
        self._tools: dict[int, int] = {}      # block index -> tool_calls index
        self._raw_usage: dict[str, Any] = {}  # Anthropic usage, merged as events restate it
        self._stopped = False                 # message_stop came

    def _chunk(self, delta: Mapping[str, Any], finish: str | None = None) -> bytes:
        return encode({**self._base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                                  "logprobs": None}]})

    def _merge_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self._raw_usage.update({k: v for k, v in usage.items() if v is not None})
            self._usage = usage_from(self._raw_usage, self._usage)

    def _event(self, ev: SSEEvent) -> list[bytes]:
        data = event_json(ev)
        kind = data.get("type") or ev.event
        if kind == "message_start":
            msg = obj(data.get("message"))
            self._base["id"] = completion_id(msg.get("id"))
            self._base["model"] = str(msg.get("model", ""))
            self._merge_usage(msg.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = obj(data.get("content_block"))
            if block.get("type") != "tool_use":
                return []
            n = self._tools[data.get("index", 0)] = len(self._tools)
            return [self._chunk({"tool_calls": [{"index": n, "id": str(block.get("id", "")), "type": "function",
                                                 "function": {"name": str(block.get("name", "")),
                                                              "arguments": ""}}]})]
        if kind == "content_block_delta":
            return self._delta(data)
        if kind == "message_delta":
            self._merge_usage(data.get("usage"))
            delta = obj(data.get("delta"))
            return [self._chunk({}, finish_reason(delta.get("stop_reason")))]
        if kind == "message_stop":
            self._stopped = True
            return self._finish()
        if kind == "error":
            return [self.fail(error_text(data))]
        return []   # ping, content_block_stop, and event types added later

    def _delta(self, data: Mapping[str, Any]) -> list[bytes]:
        delta = obj(data.get("delta"))
        if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
            return [self._chunk({"content": delta["text"]})]
        if delta.get("type") == "input_json_delta" and data.get("index") in self._tools:
            args = delta.get("partial_json")
            if isinstance(args, str) and args:
                return [self._chunk({"tool_calls": [{"index": self._tools[data["index"]],
                                                     "function": {"arguments": args}}]})]
        return []

    def _end(self) -> list[bytes]:
        if not self._stopped:   # EOF before message_stop
            raise StreamTruncated(TRUNCATED)
        out = []
        if self._include_usage:
            out.append(encode({**self._base, "choices": [], "usage": usage_to_chat(self._raw_usage)}))
        return out + [DONE]

    def _error(self, message: str) -> bytes:
        return CHAT.stream_error(message)
