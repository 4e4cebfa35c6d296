"""Pure fallback decisions: what one upstream attempt means, and what to try next.

The addon tries the entries of a ranked plan in order. After each attempt it
turns what happened into an `Outcome`, asks `classify` for a `Verdict`, and asks
`next_attempt` for the next `Attempt` (or None: stop). Sleeping and network I/O
stay in the addon; nothing here raises to mean "stop" and nothing reads a clock
(the caller passes `now`).

    Action        what the addon does next
    ok            2xx: hand the response to the client
    retry         try the next entry (after `delay_s`, if the next one is the same provider);
                  also a 2xx routecar cannot read (AttemptError.INVALID_BODY: not JSON,
                  an unknown Content-Encoding): "ok" means a usable answer, not a status
    skip_provider 401/402/403/insufficient quota: move on, skipping that provider entirely
    bigger_context 400 context_length_exceeded: move on to a larger context window only
    return        any other 4xx (content filter, bad request): the client gets it as is
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class PlanEntry(Protocol):
    """What fallback needs from a catalog entry (`routecar.catalog.CatalogEntry` fits)."""

    @property
    def id(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def context_window(self) -> int: ...


class AttemptError(StrEnum):
    """Why an attempt produced no (complete) response."""

    CONNECT = "connect"                    # refused, DNS failure
    RESET = "reset"                        # TLS or connection reset before response headers
    TIMEOUT_CONNECT = "timeout_connect"
    TIMEOUT_FIRST_BYTE = "timeout_first_byte"
    TIMEOUT = "timeout"                    # overall timeout
    INVALID_BODY = "invalid_body"          # a 2xx routecar cannot read: not JSON, unknown coding


class Action(StrEnum):
    OK = "ok"
    RETRY = "retry"
    SKIP_PROVIDER = "skip_provider"
    BIGGER_CONTEXT = "bigger_context"
    RETURN = "return"


class ErrorClass(StrEnum):
    """Short, stable names for traces."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    OVERLOADED = "overloaded"
    CONNECT_ERROR = "connect_error"
    CONNECTION_RESET = "connection_reset"
    TIMEOUT = "timeout"
    INVALID_RESPONSE = "invalid_response"     # 2xx whose body is not what it claims (retried)
    AUTH = "auth"
    QUOTA = "quota"
    CONTEXT_LENGTH = "context_length"
    CLIENT_ERROR = "client_error"
    UNEXPECTED_STATUS = "unexpected_status"   # 1xx/3xx: passed to the client as is


@dataclass(frozen=True, slots=True)
class FallbackConfig:
    # A Retry-After longer than this is not worth waiting for: move on at once.
    max_retry_after_s: float = 2.0
    # Matched case-insensitively in the first bytes of an error body.
    context_length_markers: tuple[bytes, ...] = (
        b"context_length_exceeded", b"maximum context length", b"prompt is too long",
    )
    quota_markers: tuple[bytes, ...] = (b"insufficient_quota",)


DEFAULT_CONFIG = FallbackConfig()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt produced. `error` set means the attempt failed, whatever `status` says."""

    status: int | None
    error: AttemptError | None = None
    body: bytes = b""
    retry_after: str | None = None
    duration_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.error is not None:
            # Accept the plain strings ("connect", ...) and fail loudly on a typo.
            object.__setattr__(self, "error", AttemptError(self.error))
        elif self.status is None:
            raise ValueError("Outcome needs a status or an error")


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    error_class: ErrorClass
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Attempt[E: PlanEntry]:
    entry: E
    index: int          # position of `entry` in the plan
    delay_s: float = 0.0


_ERROR_CLASSES: dict[AttemptError, ErrorClass] = {
    AttemptError.CONNECT: ErrorClass.CONNECT_ERROR,
    AttemptError.RESET: ErrorClass.CONNECTION_RESET,
    AttemptError.TIMEOUT_CONNECT: ErrorClass.TIMEOUT,
    AttemptError.TIMEOUT_FIRST_BYTE: ErrorClass.TIMEOUT,
    AttemptError.TIMEOUT: ErrorClass.TIMEOUT,
    AttemptError.INVALID_BODY: ErrorClass.INVALID_RESPONSE,
}

_RETRY_STATUSES: dict[int, ErrorClass] = {
    408: ErrorClass.TIMEOUT,
    429: ErrorClass.RATE_LIMITED,
    529: ErrorClass.OVERLOADED,     # Anthropic "overloaded_error"
}

_DELAY_SECONDS = re.compile(r"\d{1,9}(\.\d+)?")


def retry_after_delay(value: str | None, *, now: float | None, max_s: float) -> float:
    """Seconds to wait for a Retry-After header, or 0.0 to move on at once.

    `value` is delay-seconds or an HTTP-date; `now` is wall-clock epoch seconds,
    needed only for the date form. Garbage, a past date, or a wait longer than
    `max_s` all give 0.0.
    """
    if value is None:
        return 0.0
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        delay = float(value)
    else:
        if now is None:
            return 0.0
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return 0.0
        if when.tzinfo is None:     # "-0000" in RFC 2822 means UTC of unknown origin
            return 0.0
        delay = when.timestamp() - now
    if not math.isfinite(delay) or delay <= 0 or delay > max_s:
        return 0.0
    return delay


def _has_marker(body: bytes, markers: tuple[bytes, ...]) -> bool:
    lowered = body.lower()
    return any(marker.lower() in lowered for marker in markers)


def classify(outcome: Outcome, *, now: float | None = None,
             config: FallbackConfig = DEFAULT_CONFIG) -> Verdict:
    """Decide what an attempt's outcome means. `now` (epoch seconds) resolves HTTP-date Retry-After."""
    if outcome.error is not None:
        return Verdict(Action.RETRY, _ERROR_CLASSES[AttemptError(outcome.error)])
    status = outcome.status
    assert status is not None   # guaranteed by Outcome.__post_init__
    if 200 <= status < 300:
        return Verdict(Action.OK, ErrorClass.OK)
    if status in (401, 403):
        return Verdict(Action.SKIP_PROVIDER, ErrorClass.AUTH)
    if status == 402 or (status == 429 and _has_marker(outcome.body, config.quota_markers)):
        # An exhausted account stays exhausted: waiting or another model there won't help.
        return Verdict(Action.SKIP_PROVIDER, ErrorClass.QUOTA)
    if status == 400 and _has_marker(outcome.body, config.context_length_markers):
        return Verdict(Action.BIGGER_CONTEXT, ErrorClass.CONTEXT_LENGTH)
    if status in _RETRY_STATUSES or status >= 500:
        error_class = _RETRY_STATUSES.get(status, ErrorClass.SERVER_ERROR)
        delay = retry_after_delay(outcome.retry_after, now=now, max_s=config.max_retry_after_s)
        return Verdict(Action.RETRY, error_class, delay)
    if 400 <= status < 500:
        return Verdict(Action.RETURN, ErrorClass.CLIENT_ERROR)
    return Verdict(Action.RETURN, ErrorClass.UNEXPECTED_STATUS)


_STOP = (Action.OK, Action.RETURN)


def next_attempt[E: PlanEntry](
    plan: Sequence[E],
    history: Sequence[tuple[E, Verdict]],
    *,
    now: float,
    deadline: float | None,
    max_attempts: int,
) -> Attempt[E] | None:
    """The next entry of `plan` to try, or None when there is nothing left to do.

    `history` holds the (entry, verdict) pairs already tried, oldest first.
    `now` and `deadline` are on the same (monotonic) clock; `deadline=None`
    means no deadline. Only entries of `plan` are ever returned, each at most
    once; skip_provider and bigger_context verdicts narrow the rest cumulatively.
    """
    if len(history) >= max_attempts:
        return None
    if deadline is not None and now >= deadline:
        return None
    if history and history[-1][1].action in _STOP:
        return None

    tried: set[str] = set()
    skipped_providers: set[str] = set()
    min_context = -1    # next entry's window must be strictly larger than this
    for entry, verdict in history:
        tried.add(entry.id)
        if verdict.action is Action.SKIP_PROVIDER:
            skipped_providers.add(entry.provider)
        elif verdict.action is Action.BIGGER_CONTEXT:
            min_context = max(min_context, entry.context_window)

    for index, entry in enumerate(plan):
        if (entry.id in tried or entry.provider in skipped_providers
                or entry.context_window <= min_context):
            continue
        delay = 0.0
        if history:
            last_entry, last_verdict = history[-1]
            # Retry-After speaks for the provider that sent it; another provider
            # owes us no wait.
            if last_verdict.action is Action.RETRY and entry.provider == last_entry.provider:
                delay = last_verdict.delay_s
        if deadline is not None and delay > 0 and now + delay >= deadline:
            return None
        return Attempt(entry, index, delay)
    return None
