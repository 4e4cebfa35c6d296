"""The protocol every API shape implements, and what the shapes share.

An API shape is one wire format apps speak (`chat`, `responses`, `messages`):

    path ──matches──▶ is this request in my shape?   (exact suffix: `…/chat/completions`)
    body ──profile──▶ RequestProfile                  (what evaluation reads: size, max output, tools,
                                                        images, stream)
    body ──native_only──▶ reasons it cannot be translated to another shape (empty: it can)
    body ──for_entry──▶ the same request for the chosen entry's model
    answer / stream ──usage / usage_reader──▶ Usage
    RoutecarError ──error_body / stream_error──▶ the error in this shape's format

Translations between shapes (`translate.py`) are separate and pure: a request
in one shape becomes a request in another, and the answer (whole or streamed)
comes back in the caller's shape. Nothing here imports mitmproxy or does I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from ..errors import RoutecarError
from ..policy.request import RequestProfile
from .sse import SSEDecoder, SSEError

ApiName = Literal["chat", "responses", "messages"]
API_NAMES: tuple[ApiName, ...] = get_args(ApiName)


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one answer, in the names traces use whatever the shape.

    `prompt_tokens` counts every input token, cached or not (Anthropic reports
    cache reads and writes apart from `input_tokens`; they are added here).
    """

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        out = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
               "total_tokens": self.total_tokens}
        if self.cached_tokens is not None:
            out["cached_tokens"] = self.cached_tokens
        return out


class UsageReader(Protocol):
    """Fed a stream's bytes as they pass; knows the usage once the stream said it."""

    def feed(self, chunk: bytes) -> None: ...

    @property
    def usage(self) -> Usage | None: ...


@runtime_checkable
class ApiShape(Protocol):
    name: ApiName
    suffix: str                          # the path's last segments, e.g. "chat/completions"
    default_headers: Mapping[str, str]   # protocol headers sent when the app sent none

    def matches(self, path: str) -> bool: ...

    def profile(self, body: Mapping[str, Any]) -> RequestProfile: ...

    def native_only(self, body: Mapping[str, Any]) -> tuple[str, ...]: ...

    def for_entry(self, body: Mapping[str, Any], model: str) -> dict[str, Any]: ...

    def usage(self, answer: bytes) -> Usage | None: ...

    def usage_reader(self) -> UsageReader: ...

    def error_body(self, err: RoutecarError) -> dict[str, Any]: ...

    def stream_error(self, message: str) -> bytes: ...


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


_USAGE_OBJECT = re.compile(r'"usage"\s*:\s*\{')
EventUsage = Callable[[Mapping[str, Any], "Usage | None"], "Usage | None"]


class SSEUsageReader:
    """A `UsageReader` for an SSE stream: `pick(event_json, usage_so_far)` reads one
    event. Only events with a "usage" object are parsed, so it costs little per chunk;
    a broken stream leaves the usage seen so far and never raises."""

    __slots__ = ("_pick", "_decoder", "_usage", "_broken")

    def __init__(self, pick: EventUsage) -> None:
        self._pick = pick
        self._decoder = SSEDecoder()
        self._usage: Usage | None = None
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
            if _USAGE_OBJECT.search(ev.data) is None:   # most chunks: no usage, or "usage": null
                continue
            try:
                data = ev.json()
            except ValueError:
                continue
            if isinstance(data, Mapping):
                self._usage = self._pick(data, self._usage)

    @property
    def usage(self) -> Usage | None:
        return self._usage


def int_field(obj: Any, *names: str) -> int:
    """Sum of the integer fields `names` of a mapping (missing or bad ones count 0)."""
    if not isinstance(obj, Mapping):
        return 0
    return sum(v for n in names if (v := count(obj.get(n))) is not None)


class JsonShapeBase:
    """What every shape does alike: the chosen model set on the body, usage read from a whole
    answer (its top-level `usage`) or from a stream (the shape's `_pick` over its events)."""

    usage_from: Callable[[Any], Usage | None]
    pick: Callable[[Mapping[str, Any], Usage | None], Usage | None]

    def for_entry(self, body: Mapping[str, Any], model: str) -> dict[str, Any]:
        return {**body, "model": model}

    def usage(self, answer: bytes) -> Usage | None:
        body = parse_answer(answer)
        return type(self).usage_from(body.get("usage")) if body is not None else None

    def usage_reader(self) -> UsageReader:
        return SSEUsageReader(type(self).pick)
