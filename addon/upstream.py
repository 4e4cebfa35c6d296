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

Bytes are what their headers say: the body sent is JSON routecar serialised
itself (no Content-Encoding), and providers are asked for `identity` answers;
one that compresses anyway is decoded by aiohttp (gzip, deflate, br, zstd:
bounded, streams included), and the coding header is dropped with it. An
answer in a coding routecar cannot decode, or a 2xx whose body is not the JSON
it claims to be, is a failed attempt (`invalid_body`): fallback moves on and
health counts it. A stream's health is booked when it ends (`Result.stream_ms`),
not at its first event: a provider that cuts every stream must cool down.

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
from aiohttp.http_exceptions import ContentEncodingError

from .apis import SHAPES, ApiName, StreamTranslator
from .apis.sse import NOT_JSON, event_end, first_data, is_error_event
from .apis.translate import json_headers, translated_body
from .engine import Engine, Outbound
from .errors import BadRequest, MissingProviderKey, RoutecarError, ShuttingDown, UpstreamFailed
from .fallback import Action, AttemptError, Outcome, Verdict, classify, next_attempt
from .policy import Decision

MAX_ERROR_BODY = 64 * 1024
MAX_RESPONSE_BODY = 64 * 1024 * 1024
MAX_FIRST_EVENT = 256 * 1024     # a first SSE event larger than this is passed on unchecked
RESPONSE_DROP = frozenset({"content-length", "transfer-encoding", "connection",
                           "keep-alive", "date", "server"})
# Codings aiohttp decodes (auto_decompress); any other is kept as its header says, and a 2xx in it fails.
DECODED = frozenset({"gzip", "deflate", "br", "zstd"})
# The outbound body is routecar's own identity-coded JSON, whatever the app's headers said.
WIRE_DROP = frozenset({"content-encoding", "content-length", "accept-encoding", "transfer-encoding"})
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
    stream_ms: float | None = None       # a stream's attempt time: health is booked when it ends
    api_out: ApiName | None = None       # the shape the answering attempt was sent in
    translator: StreamTranslator | None = None   # brings a translated stream back to the caller's shape


def failed(err: RoutecarError, attempts: list[dict[str, Any]], api_in: ApiName = "chat") -> Result:
    """What the client gets when routecar itself answers with an error: in the caller's shape."""
    body = json.dumps(SHAPES[api_in].error_body(err)).encode()
    return Result(err.status, [("content-type", "application/json")], attempts, body=body, error=err)


def content_coding(resp: aiohttp.ClientResponse) -> str:
    """The answer's Content-Encoding, lower-case ('' when absent or identity)."""
    coding = resp.headers.get("content-encoding", "").strip().lower()
    return "" if coding == "identity" else coding


def response_headers(resp: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    """Headers for the client: a coding aiohttp decoded goes with the bytes it described."""
    drop = RESPONSE_DROP | {"content-encoding"} if content_coding(resp) in DECODED else RESPONSE_DROP
    return [(k, v) for k, v in resp.headers.items() if k.lower() not in drop]


def wire_headers(out: Outbound) -> dict[str, str]:
    """The headers sent with `out.body`: no coding of the app's, identity answers asked for."""
    headers = {k: v for k, v in out.headers.items() if k.lower() not in WIRE_DROP}
    headers["accept-encoding"] = "identity"
    return headers


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
    timeout starts then and not at the start of the connect. auto_decompress:
    `wire_headers` asks for identity, but a provider that compresses anyway is
    decoded here, within aiohttp's bounded buffers.
    """
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(_connection_ready)
    trace.on_connection_reuseconn.append(_connection_ready)
    # trust_env=False: the sidecar's own HTTPS_PROXY (if any) must not loop back into itself.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect_s),
        trace_configs=[trace], trust_env=False, auto_decompress=True)


# -- attempts ---------------------------------------------------------------------------

async def try_plan(session: aiohttp.ClientSession, engine: Engine, decision: Decision,
                   body: Mapping[str, Any], client_headers: Mapping[str, str], *,
                   timeouts: Timeouts, clock: Callable[[], float] = time.monotonic,
                   sleep: Sleep = asyncio.sleep, shutdown: asyncio.Event | None = None,
                   api_in: ApiName = "chat") -> Result:
    """Try the decision's ranked entries (at most max_attempts) until one answers.

    `shutdown` set means the proxy has reached its drain deadline: a cancellation of
    the task running this then ends the walk with 503 `shutting_down` and the attempts
    made so far (the attempt it cut says nothing about its provider's health).
    Any other cancellation propagates.
    """
    attempts: list[dict[str, Any]] = []
    try:
        return await _walk(session, engine, decision, body, client_headers, attempts,
                           timeouts=timeouts, clock=clock, sleep=sleep, api_in=api_in)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if shutdown is None or not shutdown.is_set() or task is None:
            raise
        task.uncancel()
    err = ShuttingDown(f"routecar is shutting down: the call was ended at the drain deadline "
                       f"after {len(attempts)} attempt(s)", fingerprint=decision.policy.fingerprint)
    return failed(err, attempts, api_in)


async def _walk(session: aiohttp.ClientSession, engine: Engine, decision: Decision,
                body: Mapping[str, Any], client_headers: Mapping[str, str], attempts: list[dict[str, Any]], *,
                timeouts: Timeouts, clock: Callable[[], float], sleep: Sleep, api_in: ApiName) -> Result:
    plan = decision.entries
    history: list[tuple[Any, Verdict]] = []
    missing_keys: list[MissingProviderKey] = []
    untranslatable: list[BadRequest] = []
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
            out: Outbound = engine.outbound(entry, body, client_headers, api_in)
        except (MissingProviderKey, BadRequest) as e:
            if isinstance(e, MissingProviderKey):
                missing_keys.append(e)
                verdict = Verdict(Action.SKIP_PROVIDER, "provider_key_missing")  # type: ignore[arg-type]
                record["error_class"] = f"provider_key_missing ({e.env_var} not set)"
            else:   # this provider's shape cannot carry the request (e.g. arguments that are not JSON)
                untranslatable.append(e)
                verdict = Verdict(Action.SKIP_PROVIDER, "untranslatable")  # type: ignore[arg-type]
                record["error_class"] = "untranslatable"
            history.append((entry, verdict))
            attempt = next_attempt(plan, history, now=clock(), deadline=deadline, max_attempts=max_attempts)
            continue
        record["api_out"] = out.api_out
        tr = out.translation
        resp: aiohttp.ClientResponse | None = None
        streamed = False
        try:
            outcome, resp = await _send(session, out, timeouts, deadline - clock())
            verdict = classify(outcome, now=time.time())
            prefix = b""
            if verdict.action is Action.OK and resp is not None:
                streamed = want_stream and resp.content_type == "text/event-stream"
                if content_coding(resp) not in DECODED | {""}:
                    outcome, prefix = _abandon(resp, AttemptError.INVALID_BODY, outcome)
                elif streamed:
                    outcome, prefix = await _first_event(resp, timeouts, deadline - clock(), outcome)
                else:
                    outcome, prefix = await _read_body(resp, timeouts, outcome)
                verdict = classify(outcome, now=time.time())
        except asyncio.CancelledError:
            record["error_class"] = "shutting_down"
            record["duration_ms"] = round((clock() - t0) * 1000, 1)
            if resp is not None:
                resp.close()
            raise
        duration_ms = (clock() - t0) * 1000
        record["status"] = resp.status if resp is not None else None
        record["error_class"] = str(verdict.error_class)
        record["duration_ms"] = round(duration_ms, 1)
        ok = verdict.action is Action.OK and resp is not None
        if verdict.action not in _HEALTH_NEUTRAL and not (ok and streamed):
            engine.health.record(entry.id, verdict.action is Action.OK, duration_ms)
        if ok and resp is not None:
            headers = response_headers(resp)
            ttfb = (clock() - start) * 1000
            translator = tr.stream(body) if tr is not None and streamed else None
            if tr is not None and not streamed:
                prefix, headers = translated_body(tr, resp.status, prefix, body), json_headers(headers)
            return Result(resp.status, headers, attempts, entry.id, body=prefix,
                          stream=resp if streamed else None, ttfb_ms=ttfb,
                          stream_ms=duration_ms if streamed else None, api_out=out.api_out, translator=translator)
        if verdict.action is Action.RETURN and resp is not None:
            # A client error the next provider would repeat: the app sees it (in its own shape).
            headers, err_body = response_headers(resp), outcome.body
            if tr is not None:
                err_body, headers = translated_body(tr, resp.status, err_body, body), json_headers(headers)
            return Result(resp.status, headers, attempts, entry.id, body=err_body,
                          ttfb_ms=(clock() - start) * 1000, api_out=out.api_out)
        if resp is not None:
            resp.close()
        history.append((entry, verdict))
        attempt = next_attempt(plan, history, now=clock(), deadline=deadline, max_attempts=max_attempts)
    err: RoutecarError
    if missing_keys and len(missing_keys) == len(attempts):
        err = missing_keys[0]
    elif untranslatable and len(untranslatable) == len(attempts):
        err = untranslatable[0]
    else:
        err = UpstreamFailed(attempts, fingerprint=decision.policy.fingerprint)
    return failed(err, attempts, api_in)


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
            resp = await session.post(out.url, data=out.body, headers=wire_headers(out),
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
    """A non-streaming 2xx, read whole (decoded, at most MAX_RESPONSE_BODY bytes).

    A body cut short is a failed attempt; so is one that is not a JSON object, or
    one that does not decode: a 2xx must be an answer the app can read.
    """
    data = bytearray()
    try:
        async with asyncio.timeout(timeouts.stream_idle_s):
            while len(data) <= MAX_RESPONSE_BODY:
                chunk = await resp.content.readany()
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        return _abandon(resp, AttemptError.TIMEOUT, outcome)
    except (aiohttp.ClientError, OSError) as e:
        return _abandon(resp, _read_error(e), outcome)
    if len(data) > MAX_RESPONSE_BODY or not is_json_object(data):
        return _abandon(resp, AttemptError.INVALID_BODY, outcome)
    return outcome, bytes(data)


def _read_error(e: BaseException) -> AttemptError:
    """A body that does not decode is the provider's garbage (invalid_body), not a network cut."""
    return AttemptError.INVALID_BODY if isinstance(e.__cause__, ContentEncodingError) else AttemptError.RESET


def is_json_object(data: bytes | bytearray) -> bool:
    try:
        return isinstance(json.loads(data), dict)
    except (ValueError, RecursionError):
        return False


def _abandon(resp: aiohttp.ClientResponse, error: AttemptError, outcome: Outcome) -> tuple[Outcome, bytes]:
    """An attempt that failed after its headers: drop the connection, report the error."""
    resp.close()
    return Outcome(None, error=error, duration_ms=outcome.duration_ms), b""


async def _first_event(resp: aiohttp.ClientResponse, timeouts: Timeouts, remaining_s: float,
                       outcome: Outcome) -> tuple[Outcome, bytes]:
    """Read a stream up to its first complete event, before anything reaches the client.

    A stream that breaks, stalls (first-byte timeout), opens with an error event
    or with data that is not JSON is a failed attempt that fallback may still retry.
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
    except (aiohttp.ClientError, OSError) as e:
        return _abandon(resp, _read_error(e), outcome)
    if not buf:
        return _abandon(resp, AttemptError.INVALID_BODY, outcome)   # a 2xx stream with no event at all
    cut = event_end(buf)
    if not cut and len(buf) >= MAX_FIRST_EVENT:
        return outcome, bytes(buf)   # too big to hold back: passed on unchecked
    data = first_data(bytes(buf[:cut] or buf))
    if data is NOT_JSON:
        return _abandon(resp, AttemptError.INVALID_BODY, outcome)
    if is_error_event(data):
        resp.close()
        return Outcome(502, body=bytes(buf[:MAX_ERROR_BODY]), duration_ms=outcome.duration_ms), b""
    return outcome, bytes(buf)
