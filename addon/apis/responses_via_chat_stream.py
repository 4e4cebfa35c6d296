"""A chat provider's SSE chunks as the Responses typed event sequence.

    first chunk        -> response.created, response.in_progress (status in_progress, no output)
    delta.content      -> response.output_item.added (message), response.content_part.added
                          (output_text) once, then response.output_text.delta
    delta.tool_calls[i]-> response.output_item.added (function_call) once per call,
                          response.function_call_arguments.delta
    a tool call starts -> the open message item is done: response.output_text.done,
                          response.content_part.done, response.output_item.done
    finish_reason      -> every open item is done (function_call_arguments.done, output_item.done)
    [DONE] (or a clean EOF after finish_reason)
                       -> response.completed (response.incomplete for length/content_filter)
                          with the whole output and usage
    an error chunk, a cut, an EOF before finish_reason
                       -> an `error` event

Every event carries the next `sequence_number`. The done events and the final
response restate the whole answer, so its text and arguments are kept, up to
`MAX_ANSWER` bytes (beyond that the stream ends with an error event).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .base import first_choice, obj
from .chat import usage_from
from .responses_via_chat import (INCOMPLETE, IdMaker, call_item, message_item, random_id, response_object,
                                 usage_to_responses)
from .sse import SSEEvent, encode_typed
from .stream import MAX_ANSWER, TRUNCATED, SSETranslator, StreamFailure, StreamTruncated, error_text, event_json


@dataclass
class _Item:
    index: int                  # output_index
    id: str
    call_id: str = ""           # function calls only
    name: str = ""
    parts: list[str] = field(default_factory=list)
    done: bool = False

    @property
    def is_call(self) -> bool:
        return bool(self.call_id) or bool(self.name)


class ChatToResponsesStream(SSETranslator):
    def __init__(self, request: Mapping[str, Any], new_id: IdMaker = random_id,
                 now: Callable[[], float] = time.time, max_answer: int = MAX_ANSWER) -> None:
        super().__init__()
        self._request = request
        self._new_id = new_id
        self._created = int(now())
        self._id = new_id("resp")
        self._model = ""
        self._seq = 0
        self._started = False
        self._items: list[_Item] = []
        self._text: _Item | None = None        # the open message item
        self._calls: dict[int, _Item] = {}      # chat tool_call index -> item
        self._finish_reason: str | None = None
        self._chat_usage: Mapping[str, Any] | None = None
        self._size = 0
        self._max_answer = max_answer

    def _emit(self, data: dict[str, Any]) -> bytes:
        data["sequence_number"] = self._seq
        self._seq += 1
        return encode_typed(data)

    def _response(self, status: str, output: list[dict[str, Any]] | None = None,
                  incomplete: str | None = None) -> dict[str, Any]:
        usage = usage_to_responses(self._chat_usage) if output is not None else None
        return response_object(self._request, self._id, self._model, self._created, status, output or [],
                               usage, incomplete)

    def _keep(self, item: _Item, piece: str) -> None:
        self._size += len(piece)
        if self._size > self._max_answer:
            raise StreamFailure(f"routecar: answer larger than {self._max_answer} bytes cannot be translated")
        item.parts.append(piece)

    # -- events ------------------------------------------------------------------------------
    def _event(self, ev: SSEEvent) -> list[bytes]:
        if ev.data.strip() == "[DONE]":
            return self._finish()
        data = event_json(ev)
        if data.get("error") is not None:
            return [self.fail(error_text(data))]
        out: list[bytes] = []
        if not self._started:
            self._started = True
            self._model = str(data.get("model", ""))
            out += [self._emit({"type": "response.created", "response": self._response("in_progress")}),
                    self._emit({"type": "response.in_progress", "response": self._response("in_progress")})]
        if isinstance(data.get("usage"), dict):
            self._chat_usage = data["usage"]
            self._usage = usage_from(data["usage"])
        choice = first_choice(data)
        delta = obj(choice.get("delta"))
        if isinstance(delta.get("content"), str) and delta["content"]:
            out += self._text_delta(delta["content"])
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                out += self._call_delta(call)
        if choice.get("finish_reason"):
            self._finish_reason = str(choice["finish_reason"])
            out += self._close_text()
            for item in self._calls.values():
                out += self._close_call(item)
        return out

    def _text_delta(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        item = self._text
        if item is None:
            item = self._text = _Item(len(self._items), self._new_id("msg"))
            self._items.append(item)
            added = message_item(item.id, "", "in_progress")
            added["content"] = []
            out += [self._emit({"type": "response.output_item.added", "output_index": item.index, "item": added}),
                    self._emit({"type": "response.content_part.added", "item_id": item.id,
                                "output_index": item.index, "content_index": 0,
                                "part": {"type": "output_text", "text": "", "annotations": []}})]
        self._keep(item, text)
        out.append(self._emit({"type": "response.output_text.delta", "item_id": item.id, "output_index": item.index,
                               "content_index": 0, "delta": text, "logprobs": []}))
        return out

    def _close_text(self) -> list[bytes]:
        item, self._text = self._text, None
        if item is None:
            return []
        item.done = True
        text = "".join(item.parts)
        done = message_item(item.id, text)
        return [self._emit({"type": "response.output_text.done", "item_id": item.id, "output_index": item.index,
                            "content_index": 0, "text": text, "logprobs": []}),
                self._emit({"type": "response.content_part.done", "item_id": item.id, "output_index": item.index,
                            "content_index": 0, "part": done["content"][0]}),
                self._emit({"type": "response.output_item.done", "output_index": item.index, "item": done})]

    def _call_delta(self, call: Mapping[str, Any]) -> list[bytes]:
        n = call.get("index", 0)
        fn = obj(call.get("function"))
        out: list[bytes] = []
        item = self._calls.get(n)
        if item is None:
            out += self._close_text()
            item = self._calls[n] = _Item(len(self._items), self._new_id("fc"), str(call.get("id") or f"call_{n}"),
                                          str(fn.get("name") or ""))
            self._items.append(item)
            out.append(self._emit({"type": "response.output_item.added", "output_index": item.index,
                                   "item": call_item(item.id, item.call_id, item.name, "", "in_progress")}))
        args = fn.get("arguments")
        if isinstance(args, str) and args and not item.done:
            self._keep(item, args)
            out.append(self._emit({"type": "response.function_call_arguments.delta", "item_id": item.id,
                                   "output_index": item.index, "delta": args}))
        return out

    def _close_call(self, item: _Item) -> list[bytes]:
        if item.done:
            return []
        item.done = True
        args = "".join(item.parts)
        return [self._emit({"type": "response.function_call_arguments.done", "item_id": item.id,
                            "output_index": item.index, "name": item.name, "arguments": args}),
                self._emit({"type": "response.output_item.done", "output_index": item.index,
                            "item": call_item(item.id, item.call_id, item.name, args)})]

    # -- the end ---------------------------------------------------------------------------------
    def _output(self) -> list[dict[str, Any]]:
        return [call_item(i.id, i.call_id, i.name, "".join(i.parts)) if i.is_call
                else message_item(i.id, "".join(i.parts)) for i in self._items]

    def _finish(self) -> list[bytes]:
        if self._finish_reason is None:
            self._finish_reason = "stop"   # [DONE] without a finish_reason: the provider says it is done
        return super()._finish()

    def _end(self) -> list[bytes]:
        if self._finish_reason is None:
            raise StreamTruncated(TRUNCATED)
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out.append(self._emit({"type": "response.created", "response": self._response("in_progress")}))
        out += self._close_text()
        for item in self._calls.values():
            out += self._close_call(item)
        incomplete = INCOMPLETE.get(self._finish_reason)
        kind = "response.incomplete" if incomplete else "response.completed"
        status = "incomplete" if incomplete else "completed"
        out.append(self._emit({"type": kind, "response": self._response(status, self._output(), incomplete)}))
        return out

    def _error(self, message: str) -> bytes:
        return self._emit({"type": "error", "code": "stream_interrupted", "message": message, "param": None})
