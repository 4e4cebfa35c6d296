"""The protocol every API shape implements, and what the shapes share.

An API shape is one wire format apps speak (`chat`, `responses`, `messages`):

    path ──matches──▶ is this request in my shape?   (exact suffix: `…/chat/completions`)
    body ──profile──▶ RequestProfile                  (what evaluation reads: size, max output, tools,
                                                        images, stream)
    body ──native_only──▶ reasons it cannot be translated to another shape (empty: it can)
    body ──for_entry──▶ the same request for the chosen entry's model
    answer / stream ──usage / usage_reader──▶ TokenUsage (usage.py: one type for every shape),
                                              and how a stream ended (StreamEnd)
    RoutecarError ──error_body / stream_error──▶ the error in this shape's format

Translations between shapes (`translate.py`) are separate and pure: a request
in one shape becomes a request in another, and the answer (whole or streamed)
comes back in the caller's shape. Nothing here imports mitmproxy or does I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from ..errors import RoutecarError
from ..policy.request import RequestProfile
from ..usage import TokenUsage
from .sse import SSEDecoder, SSEError, SSEEvent

ApiName = Literal["chat", "responses", "messages"]
API_NAMES: tuple[ApiName, ...] = get_args(ApiName)


class StreamEnd(StrEnum):
    """How a provider's stream ended, as its own events say."""

    COMPLETE = "complete"     # the shape's terminal marker came ([DONE], response.completed, message_stop)
    ERROR = "error"           # the provider reported an error in the stream (or it could not be read)
    TRUNCATED = "truncated"   # it ended without its terminal marker


class UsageReader(Protocol):
    """Fed a stream's bytes as they pass (the whole stream, in bounded memory); knows the usage
    once the stream said it, and whether it said it was complete."""

    def feed(self, chunk: bytes) -> None: ...

    def close(self) -> None: ...

    @property
    def usage(self) -> TokenUsage | None: ...

    @property
    def end(self) -> StreamEnd | None: ...   # None: neither its terminal marker nor an error (yet)


@runtime_checkable
class ApiShape(Protocol):
    name: ApiName
    suffix: str                          # the path's last segments, e.g. "chat/completions"
    default_headers: Mapping[str, str]   # protocol headers sent when the app sent none

    def matches(self, path: str) -> bool: ...

    def profile(self, body: Mapping[str, Any]) -> RequestProfile: ...

    def native_only(self, body: Mapping[str, Any]) -> tuple[str, ...]: ...

    def for_entry(self, body: Mapping[str, Any], model: str) -> dict[str, Any]: ...

    def usage(self, answer: bytes) -> TokenUsage | None: ...

    def usage_reader(self) -> UsageReader: ...

    def error_body(self, err: RoutecarError) -> dict[str, Any]: ...

    def stream_error(self, message: str, after: UsageReader | None = None) -> bytes: ...


# -- shared helpers -----------------------------------------------------------------------

def path_matches(path: str, suffix: str) -> bool:
    """Exact suffix match on whole segments, query ignored: `/v1/chat/completions?x=1`
    matches `chat/completions`; `/v1/chat/completions/` and `/v1/xchat/completions` do not."""
    p = path.split("?", 1)[0]
    return p.endswith("/" + suffix)


def estimate_tokens(chars: int, messages: int) -> int:
    """~4 characters per token, +4 per message, +3 for the reply's priming (as for chat)."""
    return chars // 4 + 4 * messages + 3


def json_size(value: Any) -> int:
    return len(json.dumps(value, default=str)) if value else 0


def count(value: Any) -> int | None:
    """A token count from a body field: a non-negative int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


EMPTY: Mapping[str, Any] = {}


def obj(value: Any) -> Mapping[str, Any]:
    """A JSON object field, or an empty one when it is missing or not an object (parsed JSON
    objects are dicts: checking `dict` is much cheaper than the `Mapping` ABC, per event)."""
    return value if isinstance(value, dict) else EMPTY


def first_choice(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """A chat answer's or chunk's first choice (empty when there is none)."""
    choices = data.get("choices")
    return obj(choices[0]) if isinstance(choices, list) and choices else EMPTY


def model_of(body: Mapping[str, Any]) -> str | None:
    model = body.get("model")
    return model if isinstance(model, str) else None


def parse_answer(answer: bytes | None) -> Mapping[str, Any] | None:
    """A whole answer's JSON object, or None (empty, not JSON, not an object)."""
    if not answer:
        return None
    try:
        body = json.loads(answer)
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, Mapping) else None


def error_message(body: bytes) -> str:
    """The message of an error body, OpenAI's or Anthropic's (`error.message`), or the body's text."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    err = data.get("error") if isinstance(data, Mapping) else None
    if isinstance(err, Mapping) and isinstance(err.get("message"), str):
        return err["message"]
    if isinstance(err, str):
        return err
    return body[:2000].decode("utf-8", "replace") or "provider error"


EventUsage = Callable[[Mapping[str, Any], TokenUsage | None], TokenUsage | None]
EventEnd = Callable[[Mapping[str, Any]], StreamEnd | None]


class SSEUsageReader:
    """A `UsageReader` for an SSE stream. `pick(event_json, usage_so_far)` reads an event's
    usage, `ends(event_json)` says whether it ends the stream, `done` is a data line that
    completes it (chat's `[DONE]`). Only events whose data `watch` matches (they may carry
    usage or end the stream) are parsed, so it costs little per chunk; a stream that is not
    usable SSE leaves what was seen so far and never raises."""

    __slots__ = ("_pick", "_ends", "_watch", "_done", "_decoder", "_usage", "_end", "_broken")

    def __init__(self, pick: EventUsage, ends: EventEnd, watch: re.Pattern[str], done: str | None = None) -> None:
        self._pick, self._ends, self._watch, self._done = pick, ends, watch, done
        self._decoder = SSEDecoder()
        self._usage: TokenUsage | None = None
        self._end: StreamEnd | None = None
        self._broken = False

    def feed(self, chunk: bytes) -> None:
        if self._broken:
            return
        try:
            events = self._decoder.feed(chunk)
        except SSEError:
            self._broken = True
            return
        for ev in events:
            self._event(ev)

    def close(self) -> None:
        """The stream ended: a last event without its blank line still counts."""
        if not self._broken:
            for ev in self._decoder.close():
                self._event(ev)
            self._broken = True

    def _event(self, ev: SSEEvent) -> None:
        if self._done is not None and ev.data.strip() == self._done:
            self._end = self._end or StreamEnd.COMPLETE
            return
        if self._watch.search(ev.data) is None:   # most chunks: a delta, no usage, not the end
            return
        try:
            data = ev.json()
        except ValueError:
            return
        if isinstance(data, dict):
            self._usage = self._pick(data, self._usage)
            self._end = self._end or self._ends(data)

    @property
    def usage(self) -> TokenUsage | None:
        return self._usage

    @property
    def end(self) -> StreamEnd | None:
        return self._end


def unknown_fields(body: Mapping[str, Any], known: frozenset[str]) -> list[str]:
    """`field:NAME` for each field of `body` (not null) a translation neither carries nor
    drops knowingly: such a request needs a provider of its own shape, since a translation
    would drop the field silently (a new or beta feature, `logit_bias`, `include`, ...)."""
    return [f"field:{k}" for k, v in body.items() if v is not None and k not in known]


def int_field(obj: Any, *names: str) -> int:
    """Sum of the integer fields `names` of a mapping (missing or bad ones count 0)."""
    if not isinstance(obj, Mapping):
        return 0
    return sum(v for n in names if (v := count(obj.get(n))) is not None)


class JsonShapeBase:
    """What every shape does alike: the chosen model set on the body, usage read from a whole
    answer (its top-level `usage`) or from a stream (the shape's `pick`, `ends`, `watch` and
    `done` over its events: see SSEUsageReader)."""

    pick: EventUsage
    ends: EventEnd
    watch: re.Pattern[str]
    done: str | None = None

    def for_entry(self, body: Mapping[str, Any], model: str) -> dict[str, Any]:
        return {**body, "model": model}

    def usage(self, answer: bytes) -> TokenUsage | None:
        body = parse_answer(answer)
        return TokenUsage.from_reported(body.get("usage")) if body is not None else None

    def usage_reader(self) -> UsageReader:
        cls = type(self)
        return SSEUsageReader(cls.pick, cls.ends, cls.watch, cls.done)
