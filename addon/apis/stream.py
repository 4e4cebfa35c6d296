"""The frame every stream translator shares: bytes in, bytes out, incrementally.

    feed(chunk) -> bytes    the caller-shape bytes for the provider bytes seen so far
    close()     -> bytes    the provider's stream ended (EOF): the closing events, or an
                            error event if it ended before saying it was complete
    fail(msg)   -> bytes    the provider's stream broke: an error event in the caller's shape
    usage                   what the provider reported, once it did
    end                     how the provider's stream ended (StreamEnd), once it did: COMPLETE
                            (it said so), TRUNCATED (EOF before that) or ERROR (its error event,
                            data routecar cannot read, a limit, or `fail`)

A chunk may split an SSE line anywhere (the decoder keeps the partial line);
memory stays bounded by the decoder's event limit plus, for a translation that
must restate the whole answer at its end (Responses), `MAX_ANSWER` bytes. After
an error event nothing more is emitted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from ..usage import TokenUsage
from .base import ApiShape, StreamEnd
from .sse import SSEDecoder, SSEError, SSEEvent

MAX_ANSWER = 16 * 1024 * 1024


class StreamTranslator(Protocol):
    def feed(self, chunk: bytes) -> bytes: ...

    def close(self) -> bytes: ...

    def fail(self, message: str) -> bytes: ...

    @property
    def usage(self) -> TokenUsage | None: ...

    @property
    def end(self) -> StreamEnd | None: ...


class SSETranslator:
    """Base class: subclasses implement `_event`, `_end` and `_error` on decoded events."""

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._over = False          # closing events or an error event were emitted
        self._usage: TokenUsage | None = None
        self._ended: StreamEnd | None = None

    @property
    def usage(self) -> TokenUsage | None:
        return self._usage

    @property
    def end(self) -> StreamEnd | None:
        return self._ended

    def feed(self, chunk: bytes) -> bytes:
        if self._over:
            return b""
        try:
            events = self._decoder.feed(chunk)
        except SSEError as e:
            return self.fail(f"routecar: cannot translate the provider's stream: {e}")
        return self._run(events)

    def close(self) -> bytes:
        if self._over:
            return b""
        try:
            out = self._run(self._decoder.close())
        except SSEError as e:
            return self.fail(f"routecar: cannot translate the provider's stream: {e}")
        if self._over:
            return out
        self._over = True
        try:
            closing = self._end()
        except StreamTruncated as e:
            self._ended = StreamEnd.TRUNCATED
            return out + self._error(str(e))
        self._ended = StreamEnd.COMPLETE
        return out + b"".join(closing)

    def fail(self, message: str) -> bytes:
        if self._over:
            return b""
        self._over, self._ended = True, StreamEnd.ERROR
        return self._error(message)

    def _run(self, events: list[SSEEvent]) -> bytes:
        out: list[bytes] = []
        for ev in events:
            if self._over:
                break
            try:
                out += self._event(ev)
            except StreamFailure as e:
                out.append(self.fail(str(e)))
        return b"".join(out)

    def _finish(self) -> list[bytes]:
        """Emit the closing events now (the provider said it is done)."""
        self._over, self._ended = True, StreamEnd.COMPLETE
        return self._end()

    # -- for subclasses ------------------------------------------------------------------
    def _event(self, ev: SSEEvent) -> list[bytes]:
        raise NotImplementedError

    def _end(self) -> list[bytes]:
        """The closing events (at EOF, or when the provider said it is done); raise
        StreamTruncated at an EOF before the provider had finished."""
        raise NotImplementedError

    def _error(self, message: str) -> bytes:
        raise NotImplementedError


class StreamFailure(Exception):
    """Raised inside `_event` to end the stream with an error event."""


class StreamTruncated(Exception):
    """Raised by `_end` when the provider's stream ended before it said it was complete."""


TRUNCATED = "routecar: the provider's stream ended before the answer was complete"


def event_json(ev: SSEEvent) -> Mapping[str, Any]:
    """An event's data as a JSON object, or a failure naming what is wrong."""
    try:
        data = json.loads(ev.data)
    except ValueError:
        raise StreamFailure("routecar: the provider sent an event that is not JSON") from None
    if not isinstance(data, dict):
        raise StreamFailure("routecar: the provider sent an event that is not a JSON object")
    return data


def error_text(data: Mapping[str, Any]) -> str:
    """The message of an in-stream error object (OpenAI's or Anthropic's)."""
    err = data.get("error")
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return err["message"]
    if isinstance(data.get("message"), str):
        return data["message"]
    return "the provider reported an error in its stream"


class Reshape:
    """A provider's stream on its way to the caller: its bytes in the caller's shape (through
    `translator` when the request was translated; as they are otherwise, read by the shape's
    usage reader), routecar's own errors in the caller's shape, the usage the provider
    reported over the whole stream, and how the stream ended."""

    def __init__(self, shape: ApiShape, translator: StreamTranslator | None) -> None:
        self.shape, self.translator = shape, translator
        self.reader = shape.usage_reader() if translator is None else None

    def feed(self, chunk: bytes) -> bytes:
        if self.translator is not None:
            return self.translator.feed(chunk)
        assert self.reader is not None
        self.reader.feed(chunk)
        return chunk

    def close(self) -> bytes:
        """The provider's stream ended: a translation's closing events (or its error)."""
        if self.translator is not None:
            return self.translator.close()
        assert self.reader is not None
        self.reader.close()
        return b""

    def fail(self, message: str) -> bytes:
        """routecar's error event in the caller's shape, continuing the stream sent so far."""
        return self.translator.fail(message) if self.translator is not None else self.shape.stream_error(
            message, self.reader)

    @property
    def usage(self) -> TokenUsage | None:
        return self.translator.usage if self.translator is not None else self.reader.usage if self.reader else None

    @property
    def end(self) -> StreamEnd:
        """How the provider's stream ended (asked after `close`): without its terminal marker
        and without an error, it was TRUNCATED."""
        seen = self.translator.end if self.translator is not None else self.reader.end if self.reader else None
        return seen or StreamEnd.TRUNCATED
