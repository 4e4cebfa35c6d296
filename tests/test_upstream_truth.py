"""upstream and relay tell the truth: bytes match their headers, a 2xx routecar cannot read
is a failure, a stream's health is booked at its end, and a shutdown ends calls visibly.

Same harness as test_upstream.py: one event loop per test with the fakes, a real
session, the relay and the real Engine; no proxy.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from routecar.apis import SHAPES, Reshape, StreamEnd
from routecar.relay import StreamStats, stream_health
from routecar.upstream import try_plan
from tests.test_upstream import BODY, EU, FAST, STREAM, Harness, content, events, fetch, park, run


def header(rec: dict, name: str) -> list[str]:
    return [v for k, v in rec["headers"] if k.lower() == name]


def text_of(raw: bytes) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events(raw) if e != "[DONE]")


# -- compressed answers ------------------------------------------------------------------------

@pytest.mark.parametrize("coding", ["auto", "gzip", "deflate", "br", "zstd"])
def test_compressed_answers_are_decoded_and_their_coding_dropped(tmp_path, coding):
    async def t(h: Harness) -> None:
        h.fleet.set_script("mistral", [{"compress": coding}])
        res = await h.route(EU)
        assert content(res) == "[fake:mistral] model=mistral-small-3 ok"
        assert "content-encoding" not in {k.lower() for k, _ in res.headers}
        sres = await h.route(EU, body=STREAM)
        assert sres.stream is not None
        _, headers, raw = await fetch(h.relay, park(h, sres, []))
        assert "Content-Encoding" not in headers
        assert text_of(raw) == "[fake:mistral] model=mistral-small-3 ok"
        for rec in h.fleet.requests("mistral"):   # asked for identity every time
            assert header(rec, "accept-encoding") == ["identity"]
    run(tmp_path, t)


def test_the_apps_codings_never_reach_the_provider(tmp_path):
    async def t(h: Harness) -> None:
        pol = h.engine.policies().parse(json.dumps(EU))
        res = await try_plan(h.session, h.engine, h.engine.decide(pol, BODY), BODY,
                             {"content-encoding": "gzip", "accept-encoding": "br", "content-length": "3"},
                             timeouts=FAST)
        assert res.status == 200
        [rec] = h.fleet.requests("mistral")
        assert header(rec, "content-encoding") == [] and header(rec, "accept-encoding") == ["identity"]
        assert rec["body"]["messages"] == BODY["messages"]   # plain JSON, read as such
    run(tmp_path, t)


# -- a 2xx routecar cannot read is a failure ---------------------------------------------------

GARBAGE = [
    {"body": "<html>502 from a CDN</html>"},                                          # text/plain
    {"body": "{\"choices\": [", "content_type": "application/json"},                 # cut JSON
    {"body": "[1, 2]", "content_type": "application/json"},                           # not an object
    {"body": "", "content_type": "application/json"},                                 # empty
    {"body": "null", "content_type": "application/json"},
    {"body": "{\"ok\": 1}", "headers": {"Content-Encoding": "gzip"}},                # says gzip, is not
    {"compress": "x-snappy"},                                                         # a coding nobody decodes
]


@pytest.mark.parametrize("rule", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_2xx_is_a_failed_attempt_fallback_and_health_count_it(tmp_path, rule):
    async def t(h: Harness) -> None:
        h.fleet.set_script("mistral", [dict(rule, status=200)])
        res = await h.route(EU)
        assert res.entry_id == "scaleway/mistral-small-3" and res.status == 200
        assert res.attempts[0]["status"] == 200 and res.attempts[0]["error_class"] == "invalid_response"
        health = h.engine.health.snapshot()["mistral/mistral-small-3"]
        assert health["consecutive_failures"] == 1 and health["error_rate"] == 1.0
    run(tmp_path, t)


@pytest.mark.parametrize("body", ["data: <html>oops</html>\n\n", "", ": ping\n\ndata: {\"x\": 1}\n\n"])
def test_stream_opening_with_garbage_or_nothing_is_retried(tmp_path, body):
    async def t(h: Harness) -> None:
        h.fleet.set_script("mistral", [{"status": 200, "body": body, "content_type": "text/event-stream"}])
        res = await h.route(EU, body=STREAM)
        if body.startswith(": ping"):   # a comment first is fine: it has no data to judge
            assert res.entry_id == "mistral/mistral-small-3"
            return
        assert res.entry_id == "scaleway/mistral-small-3"
        assert res.attempts[0]["error_class"] == "invalid_response"
    run(tmp_path, t)


# -- a stream's health is booked at its end ---------------------------------------------------

def test_a_streams_health_waits_for_its_end(tmp_path):
    async def t(h: Harness) -> None:
        res = await h.route(EU, body=STREAM)
        assert res.stream is not None and res.stream_ms is not None and res.stream_ms > 0
        assert "mistral/mistral-small-3" not in h.engine.health.snapshot()   # nothing booked yet
        done: list[StreamStats] = []
        await fetch(h.relay, park(h, res, done))
        assert stream_health(done[0]) is True
        plain = await h.route(EU)
        assert plain.stream_ms is None   # a whole answer is booked at once
        assert h.engine.health.snapshot()["mistral/mistral-small-3"]["samples"] == 1
    run(tmp_path, t)


@pytest.mark.parametrize("stats,verdict", [
    (StreamStats(), True),
    (StreamStats(error="upstream stream broke: ClientPayloadError"), False),
    (StreamStats(error="upstream stream timed out"), False),
    (StreamStats(client_gone=True), None),
    (StreamStats(client_gone=True, error="upstream stream broke: X"), False),
    (StreamStats(interrupted=True), None),
])
def test_stream_health_verdicts(stats, verdict):
    assert stream_health(stats) is verdict


# -- shutdown --------------------------------------------------------------------------------

def test_cancelled_at_the_drain_deadline_answers_503_with_the_attempts(tmp_path):
    async def t(h: Harness) -> None:
        h.fleet.set_script("mistral", [{"delay": 10}])
        shutdown = asyncio.Event()
        pol = h.engine.policies().parse(json.dumps(EU))
        task = asyncio.ensure_future(try_plan(h.session, h.engine, h.engine.decide(pol, BODY), BODY, {},
                                              timeouts=FAST, shutdown=shutdown))
        async with asyncio.timeout(5):
            while not h.fleet.requests("mistral"):
                await asyncio.sleep(0.01)
        shutdown.set()
        task.cancel()
        res = await task
        assert res.status == 503 and res.error is not None and res.error.code == "shutting_down"
        assert json.loads(res.body)["error"]["code"] == "shutting_down"
        [attempt] = res.attempts
        assert attempt["error_class"] == "shutting_down" and attempt["duration_ms"] > 0
        assert h.engine.health.snapshot() == {}   # our shutdown says nothing about mistral
    run(tmp_path, t)


def test_any_other_cancellation_propagates(tmp_path):
    async def t(h: Harness) -> None:
        h.fleet.set_script("mistral", [{"delay": 10}])
        pol = h.engine.policies().parse(json.dumps(EU))
        task = asyncio.ensure_future(try_plan(h.session, h.engine, h.engine.decide(pol, BODY), BODY, {},
                                              timeouts=FAST, shutdown=asyncio.Event()))
        async with asyncio.timeout(5):
            while not h.fleet.requests("mistral"):
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    run(tmp_path, t)


def test_interrupt_ends_a_running_stream_with_a_shutting_down_event(tmp_path):
    async def t(h: Harness) -> None:
        h.fleet.set_script("mistral", [{"chunks": 50, "chunk_delay": 0.1}])
        res = await h.route(EU, body=STREAM)
        done: list[StreamStats] = []
        path = park(h, res, done)
        reader, writer = await asyncio.open_connection("127.0.0.1", h.relay.port)
        writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"data: ")
        h.relay.interrupt()
        async with asyncio.timeout(5):   # far less than the 5 s the stream would take
            rest = await reader.readuntil(b"\r\n0\r\n\r\n")
        writer.close()
        body = b"".join(_dechunk(head + rest))
        evs = events(body)
        assert evs[-1]["error"]["code"] == "shutting_down"
        assert all("choices" in e for e in evs[:-1])   # whole events, then the error event
        assert done[0].interrupted and stream_health(done[0]) is None
        assert res.stream is not None and res.stream.closed
    run(tmp_path, t)


def test_a_stream_fetched_after_interrupt_ends_at_once(tmp_path):
    async def t(h: Harness) -> None:
        h.fleet.set_script("mistral", [{"chunks": 50, "chunk_delay": 0.1}])
        res = await h.route(EU, body=STREAM)
        done: list[StreamStats] = []
        path = park(h, res, done)
        h.relay.interrupt()
        async with asyncio.timeout(3):
            status, _, raw = await fetch(h.relay, path)
        evs = events(raw)
        assert status == 200 and len(evs) == 2 and evs[1]["error"]["code"] == "shutting_down"
        assert done[0].interrupted
    run(tmp_path, t)


def test_parked_responses_report_once_even_when_never_fetched(tmp_path):
    async def t(h: Harness) -> None:
        done: list[StreamStats] = []
        gone = h.relay.register(200, [], body=b"{}", capture=False, on_done=done.append)
        h.relay.register(200, [], body=b"{}", capture=False, on_done=done.append)
        h.relay.discard(gone)
        h.relay.discard(gone)   # twice: still one report
        await h.relay.stop()
        assert [(s.client_gone, s.interrupted) for s in done] == [(True, False), (False, True)]
    run(tmp_path, t)


def _dechunk(raw: bytes) -> list[bytes]:
    body = raw.split(b"\r\n\r\n", 1)[1]
    out = []
    while body:
        size, _, body = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out.append(body[:n])
        body = body[n + 2:]
    return out


# -- a stream that ends without its terminal marker is not a success ----------------------------

CHUNK = 'data: {"choices": [{"index": 0, "delta": {"content": "%s"}, "finish_reason": %s}]}\n\n'
DONE = "data: [DONE]\n\n"


@pytest.mark.parametrize("stats,verdict", [
    (StreamStats(end=StreamEnd.COMPLETE), True),
    (StreamStats(end=StreamEnd.TRUNCATED), False),
    (StreamStats(end=StreamEnd.ERROR), False),
    (StreamStats(client_gone=True, end=None), None),
])
def test_stream_health_reads_how_the_stream_ended(stats, verdict):
    assert stream_health(stats) is verdict


@pytest.mark.parametrize("tail,end", [
    ([CHUNK % ("lo", '"stop"'), DONE], StreamEnd.COMPLETE),
    ([CHUNK % ("lo", '"stop"')], StreamEnd.COMPLETE),      # everything but [DONE]: the answer finished
    ([CHUNK % ("lo", "null")], StreamEnd.TRUNCATED),       # cut cleanly mid-answer
    (['data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'], StreamEnd.ERROR),
])
def test_a_native_stream_is_relayed_as_is_and_its_end_reported(tmp_path, tail, end):
    async def t(h: Harness) -> None:
        pieces = [CHUNK % ("hel", "null"), *tail]
        h.fleet.set_script("mistral", [{"raw_chunks": pieces, "chunk_delay": 0.05}])
        res = await h.route(EU, body=STREAM)
        done: list[StreamStats] = []
        path = h.relay.register(res.status, res.headers, stream=res.stream, body=res.body, capture=True,
                                on_done=done.append, reshape=Reshape(SHAPES["chat"], None))
        status, _, raw = await fetch(h.relay, path)
        assert status == 200 and raw == "".join(pieces).encode()   # byte for byte, nothing added
        [stats] = done
        assert stats.end is end and stats.error is None
        assert stream_health(stats) is (end is StreamEnd.COMPLETE)
    run(tmp_path, t)


def test_a_long_messages_stream_is_priced_from_all_of_it(tmp_path):
    """message_start (input tokens) is far more than 8 KiB before the end: the shape's reader,
    which sees the whole stream, still has it; the relay's tail does not."""
    async def t(h: Harness) -> None:
        body = {"model": "claude", "max_tokens": 4000, "stream": True,
                "messages": [{"role": "user", "content": "x" * 4000}]}
        h.fleet.set_script("anthropic", [{"content": "word " * 6000, "chunks": 600}])
        pol = h.engine.policies().parse(json.dumps({"rules": [["eq", "id", "anthropic/claude-haiku-4-5"]]}))
        res = await try_plan(h.session, h.engine, h.engine.decide(pol, body, None, "messages"), body, {},
                             timeouts=FAST, api_in="messages")
        assert res.stream is not None and res.api_out == "messages"
        done: list[StreamStats] = []
        path = h.relay.register(res.status, res.headers, stream=res.stream, body=res.body, capture=False,
                                on_done=done.append, reshape=Reshape(SHAPES["messages"], None))
        _, _, raw = await fetch(h.relay, path)
        [stats] = done
        assert len(raw) > 64 * 1024 and b"message_start" not in bytes(stats.tail)
        assert stats.end is StreamEnd.COMPLETE
        assert stats.usage is not None and (stats.usage.input, stats.usage.output) == (1000, 7500)
    run(tmp_path, t)
