"""Upstream attempts over aiohttp; the winner is handed to the loopback relay (relay.py).

"Probe and pipe": the addon tries the ranked entries itself (mitmproxy cannot
re-send a request within a flow, and its own connect errors are final), so
`try_plan` walks the plan with the pure `fallback.next_attempt` until one
provider answers with a usable status. A non-streaming answer is read whole; a
streaming one is read up to its first complete SSE event (so a stream that
fails or opens with an error event is still retried: nothing has reached the
client yet), then kept open and handed to the `Relay`, a small asyncio
HTTP/1.1 server on 127.0.0.1 that mitmproxy is pointed at, so the winner's
bytes go to the client chunk by chunk (`flow.response.stream = True`) and a
client that hangs up aborts the upstream read. No mitmproxy import here.

Timeouts per attempt: `connect_s` until a connection is ready (new or reused,
told by an aiohttp trace hook, see `new_session`), then `first_byte_s` until
the response headers (for a stream: its first event); every attempt is also
cut at the request's overall `deadline_s`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from .engine import Engine, Outbound
from .errors import MissingProviderKey, RoutecarError, UpstreamFailed
from .fallback import Action, AttemptError, Outcome, Verdict, classify, next_attempt
from .policy import Decision

MAX_ERROR_BODY = 64 * 1024
MAX_RESPONSE_BODY = 64 * 1024 * 1024
MAX_FIRST_EVENT = 256 * 1024     # a first SSE event larger than this is passed on unchecked
RESPONSE_DROP = frozenset({"content-length", "content-encoding", "transfer-encoding", "connection",
                           "keep-alive", "date", "server"})
# Attempts that say nothing about the entry's health: the request itself was the problem.
_HEALTH_NEUTRAL = (Action.RETURN, Action.BIGGER_CONTEXT)

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 5.0
    first_byte_s: float = 60.0   # from a ready connection to the response headers
    stream_idle_s: float = 120.0  # max gap between two chunks of a stream
    deadline_s: float = 120.0    # all attempts of one request together


@dataclass
class Result:
    """What the client gets: a whole response, an open stream, or a failure.

    For a stream, `body` holds the bytes already read from it (its first
    event), which must be sent before the rest of `stream`.
    """

    status: int
    headers: list[tuple[str, str]]
    attempts: list[dict[str, Any]]
    entry_id: str | None = None
    body: bytes = b""
    stream: aiohttp.ClientResponse | None = None
    ttfb_ms: float | None = None
    error: RoutecarError | None = None   # set when every attempt failed


def response_headers(resp: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    return [(k, v) for k, v in resp.headers.items() if k.lower() not in RESPONSE_DROP]


# -- the session ------------------------------------------------------------------------

class _Phase:
    """Per-attempt timer handed to the trace hooks through `trace_request_ctx`."""

    __slots__ = ("timer", "first_byte_s", "cap", "connected")

    def __init__(self, first_byte_s: float, cap: float) -> None:
        self.timer: asyncio.Timeout | None = None
        self.first_byte_s = first_byte_s
        self.cap = cap                       # loop time of the request's overall deadline
        self.connected = False


async def _connection_ready(session: aiohttp.ClientSession, ctx: Any, params: Any) -> None:
    phase = ctx.trace_request_ctx
    if isinstance(phase, _Phase) and not phase.connected:
        phase.connected = True
        if phase.timer is not None:
            phase.timer.reschedule(min(asyncio.get_running_loop().time() + phase.first_byte_s, phase.cap))


def new_session(timeouts: Timeouts) -> aiohttp.ClientSession:
    """The aiohttp session `try_plan` wants: no env proxy, per-phase timeouts, no pool limit.

    The trace hooks tell `_send` when the connection is ready, so the first-byte
    timeout starts then and not at the start of the connect.
    """
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(_connection_ready)
    trace.on_connection_reuseconn.append(_connection_ready)
    # trust_env=False: the sidecar's own HTTPS_PROXY (if any) must not loop back into itself.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect_s),
        trace_configs=[trace], trust_env=False, auto_decompress=False)


# -- attempts ---------------------------------------------------------------------------

async def try_plan(session: aiohttp.ClientSession, engine: Engine, decision: Decision,
                   body: Mapping[str, Any], client_headers: Mapping[str, str], *,
                   timeouts: Timeouts, clock: Callable[[], float] = time.monotonic,
                   sleep: Sleep = asyncio.sleep) -> Result:
    """Try the decision's ranked entries (at most max_attempts) until one answers."""
    plan = decision.entries
    history: list[tuple[Any, Verdict]] = []
    attempts: list[dict[str, Any]] = []
    missing_keys: list[MissingProviderKey] = []
    start = clock()
    deadline = start + timeouts.deadline_s
    want_stream = decision.request.stream
    max_attempts = decision.policy.max_attempts
    attempt = next_attempt(plan, history, now=start, deadline=deadline, max_attempts=max_attempts)
    while attempt is not None:
        if attempt.delay_s > 0:
            await sleep(attempt.delay_s)   # next_attempt checked it fits the deadline
        entry = attempt.entry
        record: dict[str, Any] = {"entry": entry.id, "provider": entry.provider, "model": entry.model,
                                  "status": None, "error_class": None, "duration_ms": 0.0}
        attempts.append(record)
        t0 = clock()
        try:
            out: Outbound = engine.outbound(entry, body, client_headers)
        except MissingProviderKey as e:
            missing_keys.append(e)
            verdict = Verdict(Action.SKIP_PROVIDER, "provider_key_missing")  # type: ignore[arg-type]
            record["error_class"] = f"provider_key_missing ({e.env_var} not set)"
            history.append((entry, verdict))
            attempt = next_attempt(plan, history, now=clock(), deadline=deadline, max_attempts=max_attempts)
            continue
        outcome, resp = await _send(session, out, timeouts, deadline - clock())
        verdict = classify(outcome, now=time.time())
        prefix = b""
        streamed = False
        if verdict.action is Action.OK and resp is not None:
            streamed = want_stream and resp.content_type == "text/event-stream"
            if streamed:
                outcome, prefix = await _first_event(resp, timeouts, deadline - clock(), outcome)
            else:
                outcome, prefix = await _read_body(resp, timeouts, outcome)
            verdict = classify(outcome, now=time.time())
        duration_ms = (clock() - t0) * 1000
        record["status"] = resp.status if resp is not None else None
        record["error_class"] = str(verdict.error_class)
        record["duration_ms"] = round(duration_ms, 1)
        if verdict.action not in _HEALTH_NEUTRAL:
            engine.health.record(entry.id, verdict.action is Action.OK, duration_ms)
        if verdict.action is Action.OK and resp is not None:
            headers = response_headers(resp)
            ttfb = (clock() - start) * 1000
            return Result(resp.status, headers, attempts, entry.id, body=prefix,
                          stream=resp if streamed else None, ttfb_ms=ttfb)
        if verdict.action is Action.RETURN and resp is not None:
            # A client error the next provider would repeat: the app sees it as is.
            return Result(resp.status, response_headers(resp), attempts, entry.id, body=outcome.body,
                          ttfb_ms=(clock() - start) * 1000)
        if resp is not None:
            resp.close()
        history.append((entry, verdict))
        attempt = next_attempt(plan, history, now=clock(), deadline=deadline, max_attempts=max_attempts)
    err: RoutecarError
    if missing_keys and len(missing_keys) == len(attempts):
        err = missing_keys[0]
    else:
        err = UpstreamFailed(attempts, fingerprint=decision.policy.fingerprint)
    return Result(err.status, [("content-type", "application/json")], attempts,
                  body=json.dumps(err.to_openai()).encode(), error=err)


async def _send(session: aiohttp.ClientSession, out: Outbound, timeouts: Timeouts,
                remaining_s: float) -> tuple[Outcome, aiohttp.ClientResponse | None]:
    """One attempt up to the response headers (and the error body, if any)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    cap = t0 + max(remaining_s, 0.0)   # the request's overall deadline

    def ms() -> float:
        return (loop.time() - t0) * 1000

    # Until the trace hook says the connection is ready, allow connect + first byte
    # (a session without the hook still gets a bounded attempt).
    phase = _Phase(timeouts.first_byte_s, cap)
    try:
        async with asyncio.timeout_at(min(t0 + timeouts.connect_s + timeouts.first_byte_s, cap)) as timer:
            phase.timer = timer
            resp = await session.post(out.url, data=out.body, headers=out.headers,
                                      allow_redirects=False, trace_request_ctx=phase)
            if not 200 <= resp.status < 300:
                try:
                    err_body = await resp.content.read(MAX_ERROR_BODY)
                except aiohttp.ClientError:
                    err_body = b""
                resp.release()
                return Outcome(resp.status, body=err_body, retry_after=resp.headers.get("retry-after"),
                               duration_ms=ms()), resp
    except TimeoutError:
        # aiohttp's own sock_connect timeout is a TimeoutError too.
        if loop.time() >= cap:
            error = AttemptError.TIMEOUT
        elif phase.connected:
            error = AttemptError.TIMEOUT_FIRST_BYTE
        else:
            error = AttemptError.TIMEOUT_CONNECT
        return Outcome(None, error=error, duration_ms=ms()), None
    except aiohttp.ClientConnectorError:
        return Outcome(None, error=AttemptError.CONNECT, duration_ms=ms()), None
    except (aiohttp.ClientError, OSError):
        return Outcome(None, error=AttemptError.RESET, duration_ms=ms()), None
    return Outcome(resp.status, duration_ms=ms()), resp


async def _read_body(resp: aiohttp.ClientResponse, timeouts: Timeouts,
                     outcome: Outcome) -> tuple[Outcome, bytes]:
    """A non-streaming 2xx, read whole. A body cut short is a failed attempt."""
    try:
        async with asyncio.timeout(timeouts.stream_idle_s):
            data = await resp.read()
    except TimeoutError:
        return _abandon(resp, AttemptError.TIMEOUT, outcome)
    except (aiohttp.ClientError, OSError):
        return _abandon(resp, AttemptError.RESET, outcome)
    return outcome, data


def _abandon(resp: aiohttp.ClientResponse, error: AttemptError, outcome: Outcome) -> tuple[Outcome, bytes]:
    """An attempt that failed after its headers: drop the connection, report the error."""
    resp.close()
    return Outcome(None, error=error, duration_ms=outcome.duration_ms), b""


def event_end(buf: bytes | bytearray) -> int:
    """Length of the complete SSE events at the start of `buf` (0 if none is complete)."""
    return max(buf.rfind(b"\n\n") + 2 if b"\n\n" in buf else 0,
               buf.rfind(b"\r\n\r\n") + 4 if b"\r\n\r\n" in buf else 0)


def _is_error_event(events: bytes) -> bool:
    """True if the first event's data is an OpenAI-style error object."""
    for line in events.splitlines():
        if line.startswith(b"data:"):
            try:
                data = json.loads(line[5:])
            except ValueError:
                return False
            return isinstance(data, dict) and data.get("error") is not None
    return False


async def _first_event(resp: aiohttp.ClientResponse, timeouts: Timeouts, remaining_s: float,
                       outcome: Outcome) -> tuple[Outcome, bytes]:
    """Read a stream up to its first complete event, before anything reaches the client.

    A stream that breaks, stalls (first-byte timeout) or opens with an error
    event here is a failed attempt that fallback may still retry.
    """
    buf = bytearray()
    try:
        async with asyncio.timeout(max(min(timeouts.first_byte_s, remaining_s), 0.0)):
            while len(buf) < MAX_FIRST_EVENT:
                chunk = await resp.content.readany()
                if not chunk:
                    break  # a clean end: whatever came is the whole answer
                buf += chunk
                if event_end(buf):
                    break
    except TimeoutError:
        return _abandon(resp, AttemptError.TIMEOUT_FIRST_BYTE, outcome)
    except (aiohttp.ClientError, OSError):
        return _abandon(resp, AttemptError.RESET, outcome)
    if _is_error_event(bytes(buf[: event_end(buf)] or buf)):
        resp.close()
        return Outcome(502, body=bytes(buf[:MAX_ERROR_BODY]), duration_ms=outcome.duration_ms), b""
    return outcome, bytes(buf)
