"""A chat provider's SSE chunks as Anthropic's Messages event sequence.

    first chunk            -> message_start (usage unknown yet: input_tokens 0), ping
    delta.content          -> content_block_start(text) once, content_block_delta(text_delta)
    delta.tool_calls[i]    -> content_block_start(tool_use id/name) once per call,
                              content_block_delta(input_json_delta) per arguments piece
    finish_reason          -> content_block_stop of the open block; the stop reason is kept
    usage chunk            -> kept (the request asked for stream_options.include_usage)
    [DONE] (or a clean EOF after finish_reason)
                           -> message_delta(stop_reason, usage incl. input tokens), message_stop
    {"error": ...} chunk, a cut or an EOF before finish_reason
                           -> event: error (Anthropic's error object)

Blocks are opened in the order the provider starts them; a block is stopped when
the next one starts. Nothing but the ids and indices of open blocks is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import first_choice, obj
from .chat import usage_from
from .messages import MESSAGES
from .messages_via_chat import message_id, stop_reason, usage_to_messages
from .sse import SSEEvent, encode_typed
from .stream import TRUNCATED, SSETranslator, StreamTruncated, error_text, event_json


class ChatToMessagesStream(SSETranslator):
    def __init__(self) -> None:
        super().__init__()
        self._started = False
        self._open: int | None = None         # index of the open content block
        self._open_text = False               # the open block is a text block
        self._tools: dict[int, int] = {}      # chat tool_call index -> block index
        self._blocks = 0
        self._stop: str | None = None
        self._chat_usage: Mapping[str, Any] | None = None

    def _event(self, ev: SSEEvent) -> list[bytes]:
        if ev.data.strip() == "[DONE]":
            return self._finish()
        data = event_json(ev)
        if data.get("error") is not None:
            return [self.fail(error_text(data))]
        out = self._start(data)
        if isinstance(data.get("usage"), dict):
            self._chat_usage = data["usage"]
            self._usage = usage_from(data["usage"])
        choice = first_choice(data)
        delta = obj(choice.get("delta"))
        for key in ("content", "refusal"):
            if isinstance(delta.get(key), str) and delta[key]:
                out += self._text(delta[key])
                if key == "refusal":
                    self._stop = "refusal"
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                out += self._tool(call)
        if choice.get("finish_reason"):
            if self._stop is None:
                self._stop = stop_reason(choice["finish_reason"])
            out += self._close_block()
        return out

    def _start(self, data: Mapping[str, Any]) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {"id": message_id(data.get("id")), "type": "message", "role": "assistant",
                   "model": str(data.get("model", "")), "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return [encode_typed({"type": "message_start", "message": message}), encode_typed({"type": "ping"})]

    def _open_block(self, block: dict[str, Any], text: bool) -> list[bytes]:
        out = self._close_block()
        self._open, self._open_text = self._blocks, text
        self._blocks += 1
        return out + [encode_typed({"type": "content_block_start", "index": self._open, "content_block": block})]

    def _close_block(self) -> list[bytes]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        return [encode_typed({"type": "content_block_stop", "index": index})]

    def _text(self, text: str) -> list[bytes]:
        out = [] if self._open is not None and self._open_text else self._open_block({"type": "text", "text": ""},
                                                                                       True)
        return out + [encode_typed({"type": "content_block_delta", "index": self._open,
                                    "delta": {"type": "text_delta", "text": text}})]

    def _tool(self, call: Mapping[str, Any]) -> list[bytes]:
        n = call.get("index", 0)
        fn = obj(call.get("function"))
        out: list[bytes] = []
        if n not in self._tools:
            out = self._open_block({"type": "tool_use", "id": str(call.get("id") or f"toolu_{n}"),
                                    "name": str(fn.get("name") or ""), "input": {}}, False)
            self._tools[n] = self._blocks - 1
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            out.append(encode_typed({"type": "content_block_delta", "index": self._tools[n],
                                     "delta": {"type": "input_json_delta", "partial_json": args}}))
        return out

    def _end(self) -> list[bytes]:
        if self._stop is None:   # EOF before the provider said it had finished
            raise StreamTruncated(TRUNCATED)
        out = self._start({}) + self._close_block()
        usage = usage_to_messages(self._chat_usage)
        out.append(encode_typed({"type": "message_delta",
                                 "delta": {"stop_reason": self._stop, "stop_sequence": None}, "usage": usage}))
        out.append(encode_typed({"type": "message_stop"}))
        return out

    def _finish(self) -> list[bytes]:
        if self._stop is None:
            self._stop = "end_turn"   # [DONE] without a finish_reason: the provider says it is done
        return super()._finish()

    def _error(self, message: str) -> bytes:
        return MESSAGES.stream_error(message)
