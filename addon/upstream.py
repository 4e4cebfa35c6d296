"""Upstream attempts over aiohttp, and the loopback relay that streams the winner.

"Probe and pipe": the addon tries the ranked entries itself (mitmproxy cannot
re-send a request within a flow, and its own connect errors are final), so
`try_plan` walks the plan with the pure `fallback.next_attempt` until one
provider answers with a usable status. A non-streaming answer is read whole; a
streaming one is kept open and handed to the `Relay`, a small asyncio HTTP/1.1
server on 127.0.0.1 that mitmproxy is pointed at, so the winner's bytes go to
the client chunk by chunk (`flow.response.stream = True`) and a client that
hangs up aborts the upstream read. No mitmproxy import here.
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
from .errors import MissingProviderKey, RoutecarError
from .fallback import Action, Outcome, Verdict, classify, next_attempt
from .policy import Decision

MAX_ERROR_BODY = 64 * 1024
MAX_RESPONSE_BODY = 64 * 1024 * 1024
TRACE_BODY_LIMIT = 256 * 1024
RESPONSE_DROP = frozenset({"content-length", "content-encoding", "transfer-encoding", "connection",
                           "keep-alive", "date", "server"})


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 5.0
    first_byte_s: float = 60.0   # from sending the request to the response headers
    stream_idle_s: float = 120.0  # max gap between two chunks of a stream
    deadline_s: float = 120.0    # all attempts of one request together


@dataclass
class Result:
    """What the client gets: a whole response, an open stream, or a failure."""

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


async def try_plan(session: aiohttp.ClientSession, engine: Engine, decision: Decision,
                   body: Mapping[str, Any], client_headers: Mapping[str, str], *,
                   timeouts: Timeouts, clock: Callable[[], float] = time.monotonic) -> Result:
    """Try the decision's ranked entries (at most max_attempts) until one answers."""
    plan = [r.entry for r in decision.ranked]
    history: list[tuple[Any, Verdict]] = []
    attempts: list[dict[str, Any]] = []
    missing_keys: list[MissingProviderKey] = []
    start = clock()
    deadline = start + timeouts.deadline_s
    want_stream = decision.request.stream
    attempt = next_attempt(plan, history, now=start, deadline=deadline,
                           max_attempts=decision.policy.max_attempts)
    while attempt is not None:
        if attempt.delay_s > 0:
            await asyncio.sleep(attempt.delay_s)
        entry = attempt.entry
        record = {"entry": entry.id, "provider": entry.provider, "model": entry.model,
                  "status": None, "error_class": None, "duration_ms": 0.0}
        attempts.append(record)
        t0 = clock()
        try:
            out: Outbound = engine.outbound(entry, body, client_headers)
        except MissingProviderKey as e:
            missing_keys.append(e)
            verdict = Verdict(Action.SKIP_PROVIDER, "provider_key_missing")  # type: ignore[arg-type]
            record["error_class"] = f"provider_key_missing ({e.env_var} not set)"
        else:
            outcome, resp = await _send(session, out, timeouts, t0, clock)
            verdict = classify(outcome, now=time.time())
            record["status"] = outcome.status
            record["error_class"] = str(verdict.error_class)
            record["duration_ms"] = round(outcome.duration_ms, 1)
            engine.health.record(entry.id, verdict.action is Action.OK, outcome.duration_ms)
            if verdict.action is Action.OK and resp is not None:
                ttfb = (clock() - start) * 1000
                headers = response_headers(resp)
                if want_stream and resp.content_type == "text/event-stream":
                    return Result(resp.status, headers, attempts, entry.id, stream=resp, ttfb_ms=ttfb)
                try:
                    async with asyncio.timeout(timeouts.stream_idle_s):
                        data = await resp.content.read(MAX_RESPONSE_BODY)
                except (TimeoutError, aiohttp.ClientError) as e:
                    resp.close()
                    verdict = classify(Outcome(None, error="reset" if isinstance(e, aiohttp.ClientError)
                                               else "timeout"))
                    record["error_class"] = str(verdict.error_class)
                else:
                    resp.release()
                    return Result(resp.status, headers, attempts, entry.id, body=data, ttfb_ms=ttfb)
            elif verdict.action is Action.RETURN and resp is not None:
                # A client error the next provider would repeat: the app sees it as is.
                return Result(resp.status, response_headers(resp), attempts, entry.id, body=outcome.body)
            elif resp is not None:
                resp.release()
        history.append((entry, verdict))
        attempt = next_attempt(plan, history, now=clock(), deadline=deadline,
                               max_attempts=decision.policy.max_attempts)
    if missing_keys and len(missing_keys) == len(attempts):
        err: RoutecarError = missing_keys[0]
    else:
        from .errors import UpstreamFailed
        err = UpstreamFailed(attempts, fingerprint=decision.policy.fingerprint)
    return Result(err.status, [("content-type", "application/json")], attempts,
                  body=json.dumps(err.to_openai()).encode(), error=err)


async def _send(session: aiohttp.ClientSession, out: Outbound, timeouts: Timeouts, t0: float,
                clock: Callable[[], float]) -> tuple[Outcome, aiohttp.ClientResponse | None]:
    """One attempt up to the response headers (and the error body, if any)."""
    def ms() -> float:
        return (clock() - t0) * 1000
    try:
        async with asyncio.timeout(timeouts.connect_s + timeouts.first_byte_s):
            resp = await session.post(out.url, data=out.body, headers=out.headers,
                                      allow_redirects=False)
    except TimeoutError:
        return Outcome(None, error="timeout_first_byte", duration_ms=ms()), None
    except aiohttp.ClientConnectorError:
        return Outcome(None, error="connect", duration_ms=ms()), None
    except (aiohttp.ClientError, OSError):
        return Outcome(None, error="reset", duration_ms=ms()), None
    if 200 <= resp.status < 300:
        return Outcome(resp.status, duration_ms=ms()), resp
    try:
        async with asyncio.timeout(timeouts.first_byte_s):
            err_body = await resp.content.read(MAX_ERROR_BODY)
    except (TimeoutError, aiohttp.ClientError):
        err_body = b""
    resp.release()
    return Outcome(resp.status, body=err_body, retry_after=resp.headers.get("retry-after"),
                   duration_ms=ms()), resp


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
            await self._server.wait_closed()

    def register(self, status: int, headers: Sequence[tuple[str, str]], *,
                 stream: aiohttp.ClientResponse | None = None, body: bytes = b"",
                 capture: bool, on_done: Callable[[StreamStats], Awaitable[None] | None]) -> str:
        """Park a response; returns the path mitmproxy must request to get it."""
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
        try:
            while True:  # keep-alive: mitmproxy may reuse the connection
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
                    msg = b'{"error":{"message":"routecar relay: unknown or expired response","type":"server_error","code":"relay_expired","param":null}}'
                    writer.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(msg), msg))
                    await writer.drain()
                    continue
                await self._pipe(pending, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _pipe(self, p: Pending, writer: asyncio.StreamWriter) -> None:
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

        try:
            if p.stream is None:
                if p.body:
                    send(p.body)
            else:
                try:
                    while True:
                        try:
                            async with asyncio.timeout(self.timeouts.stream_idle_s):
                                chunk = await p.stream.content.readany()
                        except (TimeoutError, aiohttp.ClientError, OSError) as e:
                            stats.error = ("upstream stream timed out" if isinstance(e, TimeoutError)
                                           else f"upstream stream broke: {type(e).__name__}")
                            send(sse_error_event(f"routecar: {stats.error} after {stats.bytes} bytes"))
                            break
                        if not chunk:
                            break
                        send(chunk)
                        await writer.drain()  # a client that hung up raises here
                finally:
                    p.stream.close()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, OSError):
            stats.client_gone = True
            if p.stream is not None:
                p.stream.close()
            raise
        finally:
            done = p.on_done(stats)
            if asyncio.iscoroutine(done):
                await done
