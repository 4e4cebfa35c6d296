"""Upstream attempts over aiohttp, and the loopback relay that streams the winner.

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
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .engine import Engine, Outbound
from .errors import MissingProviderKey, RoutecarError, UpstreamFailed
from .fallback import Action, AttemptError, Outcome, Verdict, classify, next_attempt
from .policy import Decision

MAX_ERROR_BODY = 64 * 1024
MAX_RESPONSE_BODY = 64 * 1024 * 1024
MAX_FIRST_EVENT = 256 * 1024     # a first SSE event larger than this is passed on unchecked
MAX_EVENT_BUFFER = 1024 * 1024   # the relay forwards a partial event rather than buffer more
TRACE_BODY_LIMIT = 256 * 1024
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
        resp.close()
        return Outcome(None, error=AttemptError.TIMEOUT, duration_ms=outcome.duration_ms), b""
    except (aiohttp.ClientError, OSError):
        resp.close()
        return Outcome(None, error=AttemptError.RESET, duration_ms=outcome.duration_ms), b""
    return outcome, data


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
        resp.close()
        return Outcome(None, error=AttemptError.TIMEOUT_FIRST_BYTE, duration_ms=outcome.duration_ms), b""
    except (aiohttp.ClientError, OSError):
        resp.close()
        return Outcome(None, error=AttemptError.RESET, duration_ms=outcome.duration_ms), b""
    if _is_error_event(bytes(buf[: event_end(buf)] or buf)):
        resp.close()
        return Outcome(502, body=bytes(buf[:MAX_ERROR_BODY]), duration_ms=outcome.duration_ms), b""
    return outcome, bytes(buf)


# -- the relay ----------------------------------------------------------------------------

@dataclass
class StreamStats:
    bytes: int = 0
    chunks: int = 0
    error: str | None = None      # set when the stream broke after bytes were sent
    client_gone: bool = False
    tail: bytearray = field(default_factory=bytearray)   # last bytes, for the usage chunk
    captured: bytearray | None = None                   # the body for traces (None with no_log)


@dataclass
class Pending:
    status: int
    headers: list[tuple[str, str]]
    stream: aiohttp.ClientResponse | None
    body: bytes
    capture: bool
    on_done: Callable[[StreamStats], Awaitable[None] | None]
    expires: float


def sse_error_event(message: str) -> bytes:
    """An in-stream error the OpenAI SDK raises as APIError: never a silent clean end."""
    err = {"error": {"message": message, "type": "upstream_error", "code": "stream_interrupted", "param": None}}
    return b"data: " + json.dumps(err).encode() + b"\n\n"


def _is_sse(headers: Sequence[tuple[str, str]]) -> bool:
    return any(k.lower() == "content-type" and v.lower().startswith("text/event-stream") for k, v in headers)


class Relay:
    """Loopback HTTP/1.1 server serving prepared responses by one-time token."""

    PREFIX = "/__routecar_relay/"

    def __init__(self, timeouts: Timeouts, clock: Callable[[], float] = time.monotonic,
                 pending_ttl_s: float = 30.0) -> None:
        self.timeouts = timeouts
        self.clock = clock
        self.pending_ttl_s = pending_ttl_s
        self._pending: dict[str, Pending] = {}
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for p in self._pending.values():
            if p.stream is not None:
                p.stream.close()
        self._pending.clear()
        if self._server is not None:
            self._server.close()
            # wait_closed() waits for every connection: close mitmproxy's idle keep-alive
            # connections first, or shutdown hangs while an app keeps its connection open.
            for writer in list(self._conns):
                writer.close()
            await self._server.wait_closed()

    def register(self, status: int, headers: Sequence[tuple[str, str]], *,
                 stream: aiohttp.ClientResponse | None = None, body: bytes = b"",
                 capture: bool, on_done: Callable[[StreamStats], Awaitable[None] | None]) -> str:
        """Park a response; returns the path mitmproxy must request to get it.

        `body` is sent first, then (if given) the rest of `stream`.
        """
        self._expire()
        token = secrets.token_urlsafe(16)
        self._pending[token] = Pending(status, list(headers), stream, body, capture, on_done,
                                       self.clock() + self.pending_ttl_s)
        return self.PREFIX + token

    def discard(self, path: str) -> None:
        p = self._pending.pop(path.removeprefix(self.PREFIX), None)
        if p is not None and p.stream is not None:
            p.stream.close()

    def _expire(self) -> None:
        now = self.clock()
        for token in [t for t, p in self._pending.items() if p.expires < now]:
            self.discard(self.PREFIX + token)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            for _ in range(10_000):  # keep-alive: mitmproxy may reuse the connection
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                path = parts[1] if len(parts) > 1 else ""
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length" and value.strip().isdigit():
                        length = int(value.strip())
                if length:
                    await reader.readexactly(length)
                pending = self._pending.pop(path.removeprefix(self.PREFIX), None)
                if pending is None:
                    msg = (b'{"error":{"message":"routecar relay: unknown or expired response",'
                           b'"type":"server_error","code":"relay_expired","param":null}}')
                    writer.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(msg), msg))
                    await writer.drain()
                    continue
                if not await self._pipe(pending, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._conns.discard(writer)
            writer.close()

    async def _pipe(self, p: Pending, writer: asyncio.StreamWriter) -> bool:
        """Send one parked response; False if the connection can't be reused."""
        stats = StreamStats(captured=bytearray() if p.capture else None)
        head = [f"HTTP/1.1 {p.status} X"]
        head += [f"{k}: {v}" for k, v in p.headers]
        head.append("transfer-encoding: chunked")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))

        def send(chunk: bytes) -> None:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            stats.bytes += len(chunk)
            stats.chunks += 1
            stats.tail = (stats.tail + chunk)[-8192:]
            if stats.captured is not None and len(stats.captured) < TRACE_BODY_LIMIT:
                stats.captured += chunk[: TRACE_BODY_LIMIT - len(stats.captured)]

        # A client that hangs up is noticed at the next chunk written to it (drain raises).
        # Watching the connection for EOF would notice it during a long pause too, but
        # cost ~1.4 ms CPU per stream in the proxy (measured): not worth it.
        stream = p.stream
        try:
            if p.body:
                send(p.body)
                await writer.drain()
            if stream is not None:
                clean = await self._pipe_stream(stream, stats, send, writer, sse=_is_sse(p.headers))
                if clean:
                    stream.release()   # read to the end: its connection goes back to the pool
            if stats.client_gone:
                return False
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        except (ConnectionError, OSError):
            stats.client_gone = True
            return False
        finally:
            if stream is not None:
                stream.close()
            done = p.on_done(stats)
            if asyncio.iscoroutine(done):
                await done

    async def _pipe_stream(self, stream: aiohttp.ClientResponse, stats: StreamStats,
                           send: Callable[[bytes], None], writer: asyncio.StreamWriter, *, sse: bool) -> bool:
        """Copy the provider's stream; True if it ended cleanly. SSE is forwarded in whole
        events, so that an error event after a cut is never glued to half an event."""
        buf = b""
        while not stats.client_gone:
            try:
                async with asyncio.timeout(self.timeouts.stream_idle_s):
                    chunk = await stream.content.readany()
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                if stats.client_gone:
                    return False
                stats.error = ("upstream stream timed out" if isinstance(e, TimeoutError)
                               else f"upstream stream broke: {type(e).__name__}")
                # An incomplete event (buf) is dropped: the client gets whole events only.
                send(sse_error_event(f"routecar: {stats.error} after {stats.bytes} bytes"))
                return False
            if not chunk:
                if buf:
                    send(buf)
                return not stats.client_gone
            if sse:
                buf += chunk
                cut = event_end(buf)
                if not cut and len(buf) < MAX_EVENT_BUFFER:
                    continue
                cut = cut or len(buf)
                chunk, buf = buf[:cut], buf[cut:]
            send(chunk)
            await writer.drain()  # a client that hung up raises here
        return False
