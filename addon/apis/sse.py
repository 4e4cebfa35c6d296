"""Server-sent events: an incremental, bounded decoder and the encoder the shapes share.

`SSEDecoder.feed(chunk)` takes bytes exactly as they come off the wire (a chunk
may end anywhere: inside a line, between `\\r` and `\\n`, inside a UTF-8
character) and returns the events completed by it. Memory is bounded: an event
(its pending line plus its data) larger than `max_event` raises `SSEError`
instead of growing without limit.

Parsing follows the WHATWG rules the SDKs implement: lines end with `\\n`,
`\\r\\n` or `\\r`; a blank line dispatches the event; `data:` lines are joined
with `\\n`; one space after the colon is dropped; `:` starts a comment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_EVENT = 4 * 1024 * 1024


class SSEError(ValueError):
    """The byte stream is not usable SSE (an event over the size limit)."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str | None
    data: str

    def json(self) -> Any:
        """The data as JSON (ValueError if it is not)."""
        return json.loads(self.data)


class SSEDecoder:
    """Feed bytes, get complete events; `close()` flushes an event left without its blank line."""

    __slots__ = ("max_event", "_pending", "_skip_lf", "_event", "_data", "_size")

    def __init__(self, max_event: int = MAX_EVENT) -> None:
        self.max_event = max_event
        self._pending = b""        # an incomplete line
        self._skip_lf = False      # the previous chunk ended with a bare "\r"
        self._event: str | None = None
        self._data: list[str] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":   # the "\n" of a "\r\n" split across chunks
                chunk = chunk[1:]
        data = self._pending + chunk if self._pending else chunk
        lines = data.splitlines(keepends=True)
        out: list[SSEEvent] = []
        last = lines[-1] if lines else b""
        if last and last[-1:] not in (b"\n", b"\r"):
            self._pending = lines.pop()
            if len(self._pending) + self._size > self.max_event:
                raise SSEError(f"SSE event larger than {self.max_event} bytes")
        else:
            self._pending = b""
        self._skip_lf = data.endswith(b"\r")   # a "\n" may follow in the next chunk
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            if not line:
                ev = self._dispatch()
                if ev is not None:
                    out.append(ev)
            else:
                self._line(line)
        return out

    def close(self) -> list[SSEEvent]:
        """End of stream: a last event not followed by a blank line still counts."""
        if self._pending:
            self._line(self._pending)
            self._pending = b""
        ev = self._dispatch()
        return [ev] if ev is not None else []

    def _line(self, line: bytes) -> None:
        if line[:1] == b":":
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._size += len(value) + 1
            if self._size > self.max_event:
                raise SSEError(f"SSE event larger than {self.max_event} bytes")
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")

    def _dispatch(self) -> SSEEvent | None:
        event, data = self._event, self._data
        self._event, self._data, self._size = None, [], 0
        if not data:
            return None   # an event with no data is not dispatched (spec)
        return SSEEvent(event, "\n".join(data))


def _dumps(data: Mapping[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def encode(data: Mapping[str, Any] | str, event: str | None = None) -> bytes:
    """One SSE event: `event: NAME` (when given) and one `data:` line of compact JSON."""
    body = data if isinstance(data, str) else _dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {body}\n\n".encode()


def encode_typed(data: Mapping[str, Any]) -> bytes:
    """An event named after its payload's `type` (Anthropic Messages and OpenAI Responses)."""
    return encode(data, str(data["type"]))


DONE = b"data: [DONE]\n\n"


# -- framing helpers for relaying a provider's stream (upstream.py, relay.py) --------------

def event_end(buf: bytes | bytearray) -> int:
    """Length of the complete SSE events at the start of `buf` (0 if none is complete)."""
    return max(buf.rfind(b"\n\n") + 2 if b"\n\n" in buf else 0,
               buf.rfind(b"\r\n\r\n") + 4 if b"\r\n\r\n" in buf else 0)


NOT_JSON = object()
# Responses streams report errors as typed events without an "error" key at the top.
ERROR_EVENTS = frozenset({"error", "response.failed"})


def is_error_event(data: Any) -> bool:
    """An event's parsed data that reports an error, in any shape (chat `{"error": …}`,
    Anthropic `{"type": "error", …}`, Responses `error` and `response.failed`)."""
    return isinstance(data, dict) and (data.get("error") is not None or data.get("type") in ERROR_EVENTS)


def first_data(events: bytes) -> Any:
    """The first event's data, parsed: None if it has none (a comment, a bare `event:`),
    `[DONE]` as the string, and `NOT_JSON` for anything else that is not JSON."""
    event = events.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    data = b"\n".join(lines)
    if data.strip() == b"[DONE]":
        return "[DONE]"
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return NOT_JSON
