"""The loopback relay: a small asyncio HTTP/1.1 server on 127.0.0.1 serving parked
responses by one-time token, so mitmproxy streams the winning attempt chunk by chunk.

`try_plan` (upstream.py) picks the winner; the addon parks it here with
`register()` and points the flow at the returned path, with
`flow.response.stream = True`. A stream that breaks after bytes were sent ends
with an SSE error event (never a silent clean end); a client that hangs up
aborts the upstream read. `interrupt()` (the drain deadline of a shutdown) ends
every stream still running with an SSE `shutting_down` error event. Every
parked response reports to its `on_done` exactly once, also when it is
discarded or expires unfetched, so every call gets its trace. No mitmproxy
import here.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

import aiohttp

from .apis import Reshape, StreamEnd
from .apis.sse import event_end
from .keyscrub import KeyScrubber
from .upstream import Timeouts
from .usage import TokenUsage

MAX_EVENT_BUFFER = 1024 * 1024   # the relay forwards a partial event rather than buffer more
TRACE_BODY_LIMIT = 256 * 1024


@dataclass
class StreamStats:
    bytes: int = 0
    chunks: int = 0
    error: str | None = None      # set when the stream broke after bytes were sent
    client_gone: bool = False
    interrupted: bool = False     # ended by routecar itself at the drain deadline
    tail: bytearray = field(default_factory=bytearray)   # last bytes: model, finish reasons
    captured: bytearray | None = None                   # the body for traces (None with no_log)
    usage: TokenUsage | None = None                     # what the provider reported, over its whole stream
                                                        # (with a Reshape)
    end: StreamEnd | None = None                        # how the provider's stream ended, when it did
                                                        # (with a Reshape): truncated, an error, complete


@dataclass
class Pending:
    status: int
    headers: list[tuple[str, str]]
    stream: aiohttp.ClientResponse | None
    body: bytes
    capture: bool
    on_done: Callable[[StreamStats], Awaitable[None] | None]
    expires: float
    scrub: KeyScrubber | None = None
    reshape: Reshape | None = None


def sse_error_event(message: str, code: str = "stream_interrupted", type_: str = "upstream_error") -> bytes:
    """An in-stream error the OpenAI SDK raises as APIError: never a silent clean end."""
    err = {"error": {"message": message, "type": type_, "code": code, "param": None}}
    return b"data: " + json.dumps(err).encode() + b"\n\n"


SHUTDOWN_MESSAGE = "routecar is shutting down: this stream was ended at the drain deadline"
SHUTDOWN_EVENT = sse_error_event(SHUTDOWN_MESSAGE, code="shutting_down", type_="server_error")


def stream_health(stats: StreamStats) -> bool | None:
    """What a relayed stream says about its provider: True if it ended properly, False if
    it broke, ended without its terminal marker or with the provider's error event, None
    when it says nothing (the client left, or routecar ended it)."""
    if stats.interrupted or stats.client_gone and stats.error is None:
        return None
    return stats.error is None and stats.end in (None, StreamEnd.COMPLETE)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


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
        self._streaming: set[asyncio.Task[object]] = set()   # tasks copying a provider stream
        self.interrupted = False
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def interrupt(self) -> None:
        """End every running (and every later) stream with an SSE `shutting_down` event."""
        self.interrupted = True
        for task in list(self._streaming):
            task.cancel()

    async def stop(self) -> None:
        for token in list(self._pending):   # never fetched: still traced
            self._drop(token, StreamStats(interrupted=True))
        if self._server is not None:
            self._server.close()
            # wait_closed() waits for every connection: close mitmproxy's idle keep-alive
            # connections first, or shutdown hangs while an app keeps its connection open.
            for writer in list(self._conns):
                writer.close()
            await self._server.wait_closed()

    def register(self, status: int, headers: Sequence[tuple[str, str]], *,
                 stream: aiohttp.ClientResponse | None = None, body: bytes = b"",
                 capture: bool, on_done: Callable[[StreamStats], Awaitable[None] | None],
                 scrub: KeyScrubber | None = None, reshape: Reshape | None = None) -> str:
        """Park a response; returns the path mitmproxy must request to get it.

        `body` is sent first, then (if given) the rest of `stream`: with `reshape`, both are the
        provider's stream, brought to the caller's shape as they pass; then through `scrub`
        (as one stream: a key split between them is caught too).
        """
        self._expire()
        token = secrets.token_urlsafe(16)
        self._pending[token] = Pending(status, list(headers), stream, body, capture, on_done,
                                       self.clock() + self.pending_ttl_s, scrub, reshape)
        return self.PREFIX + token

    def discard(self, path: str) -> None:
        """Drop a parked response that will never be fetched (its flow failed): traced as client_gone."""
        self._drop(path.removeprefix(self.PREFIX), StreamStats(client_gone=True))

    def _drop(self, token: str, stats: StreamStats) -> None:
        p = self._pending.pop(token, None)
        if p is None:
            return
        if p.stream is not None:
            p.stream.close()
        done = p.on_done(stats)
        if asyncio.iscoroutine(done):
            asyncio.ensure_future(done)

    def _expire(self) -> None:
        now = self.clock()
        for token in [t for t, p in self._pending.items() if p.expires < now]:
            self._drop(token, StreamStats(client_gone=True))

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
        head = [f"HTTP/1.1 {p.status} {_reason(p.status)}"]
        head += [f"{k}: {v}" for k, v in p.headers]
        head.append("transfer-encoding: chunked")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))

        def write(chunk: bytes) -> None:
            if not chunk:
                return  # a zero-length chunk would end the chunked body
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            stats.bytes += len(chunk)
            stats.chunks += 1
            stats.tail = (stats.tail + chunk)[-8192:]
            if stats.captured is not None and len(stats.captured) < TRACE_BODY_LIMIT:
                stats.captured += chunk[: TRACE_BODY_LIMIT - len(stats.captured)]

        # The provider's bytes go through the key scrubber; routecar's own events (errors,
        # shutting_down) are written as they are, dropping any bytes held back as a key start.
        scrub = p.scrub.stream() if p.scrub else None

        def send(chunk: bytes) -> None:
            write(scrub.feed(chunk) if scrub is not None else chunk)

        def own(event: bytes) -> None:
            if scrub is not None:
                scrub.flush()
            write(event)

        reshape = p.reshape

        def forward(chunk: bytes) -> None:
            """The provider's bytes, in the caller's shape (a translation may hold some back)."""
            out = reshape.feed(chunk) if reshape is not None else chunk
            if out:
                send(out)

        def fail(message: str, shutdown: bool = False) -> None:
            """routecar's own error event, in the caller's shape (chat: with routecar's codes)."""
            if reshape is None or (reshape.translator is None and reshape.shape.name == "chat"):
                own(SHUTDOWN_EVENT if shutdown else sse_error_event(message))
            else:
                own(reshape.fail(message))

        # A client that hangs up is noticed at the next chunk written to it (drain raises).
        # Watching the connection for EOF would notice it during a long pause too, but
        # cost ~1.4 ms CPU per stream in the proxy (measured): not worth it.
        stream = p.stream
        try:
            if p.body:
                forward(p.body)
                await writer.drain()
            if stream is not None:
                clean = await self._pipe_stream(stream, stats, forward, writer, sse=_is_sse(p.headers),
                                                fail=fail)
                if clean:
                    stream.release()   # read to the end: its connection goes back to the pool
                    if reshape is not None:
                        if tail := reshape.close():
                            send(tail)
                        stats.end = reshape.end
            if stats.client_gone:
                return False
            if scrub is not None and not (stats.error or stats.interrupted):
                write(scrub.flush())   # held bytes that turned out not to start a key
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        except (ConnectionError, OSError):
            stats.client_gone = True
            return False
        finally:
            if stream is not None:
                stream.close()
            if reshape is not None:
                stats.usage = reshape.usage
            done = p.on_done(stats)
            if asyncio.iscoroutine(done):
                await done

    async def _pipe_stream(self, stream: aiohttp.ClientResponse, stats: StreamStats,
                           send: Callable[[bytes], None], writer: asyncio.StreamWriter, *, sse: bool,
                           fail: Callable[[str, bool], None]) -> bool:
        """Copy the provider's stream; True if it ended cleanly. At the drain deadline
        (`interrupt`) the copy is cancelled and the stream ends with a shutting_down event.
        `send` takes the provider's bytes, `fail(message, shutdown)` sends routecar's own error event."""
        task = asyncio.current_task()
        assert task is not None
        self._streaming.add(task)
        try:
            if not self.interrupted:
                return await self._copy(stream, stats, send, writer, sse=sse, fail=fail)
        except asyncio.CancelledError:
            if not self.interrupted:
                raise
            task.uncancel()
        finally:
            self._streaming.discard(task)
        stats.interrupted = True
        fail(SHUTDOWN_MESSAGE, True)   # after whole events only: a partial one was held back in _copy
        return False

    async def _copy(self, stream: aiohttp.ClientResponse, stats: StreamStats,
                    send: Callable[[bytes], None], writer: asyncio.StreamWriter, *, sse: bool,
                    fail: Callable[[str, bool], None]) -> bool:
        """SSE is forwarded in whole events, so that an error event after a cut is never
        glued to half an event."""
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
                fail(f"routecar: {stats.error} after {stats.bytes} bytes", False)
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
