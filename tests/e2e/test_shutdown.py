"""Issue 10 §6 end to end: SIGTERM drains.

A bounded set of slow calls (streams and whole answers) is in flight through the real
sidecar (`routecar run`, and stock `mitmdump -s` through the `done` hook) when it gets
SIGTERM. The listener closes at once; the calls finish and are traced; with a short
drain deadline the stream ends with an SSE `shutting_down` error event and the whole
answers with 503 `shutting_down`, traced as such. Never a 500 traceback or a 502.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.e2e.conftest import sdk

EU = json.dumps({"rules": [["eq", "region", "eu"]]})
SCALEWAY = json.dumps({"rules": [["eq", "provider", "scaleway"]]})
MSG = [{"role": "user", "content": "hi"}]
N_STREAMS = N_WHOLE = 3


def poll(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)   # polling a condition with a deadline


class Calls:
    """Calls made from threads; each result is ("ok", text, trace id) or ("error", exception, trace id)."""

    def __init__(self, side) -> None:
        self.client = sdk(side, timeout=90)
        self.results: dict[int, tuple[str, Any, str | None]] = {}
        self.threads: list[threading.Thread] = []

    def start(self, n_streams: int, n_whole: int) -> None:
        for i in range(n_streams + n_whole):
            t = threading.Thread(target=self._run, args=(i, i < n_streams), daemon=True)
            t.start()
            self.threads.append(t)

    def _run(self, i: int, streaming: bool) -> None:
        trace_id = None
        try:
            if streaming:
                s = self.client.chat.completions.create(model="gpt-4o", messages=MSG, stream=True,
                                                        extra_headers={"X-Route-Policy": EU})
                trace_id = s.response.headers["x-route-trace-id"]
                text = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
            else:
                raw = self.client.chat.completions.with_raw_response.create(
                    model="gpt-4o", messages=MSG, extra_headers={"X-Route-Policy": EU})
                trace_id = raw.headers["x-route-trace-id"]
                text = raw.parse().choices[0].message.content
            self.results[i] = ("ok", text, trace_id)
        except openai.APIStatusError as e:
            self.results[i] = ("error", e, e.response.headers.get("x-route-trace-id"))
        except Exception as e:  # noqa: BLE001 - the test inspects it
            self.results[i] = ("error", e, trace_id)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(deadline - time.monotonic(), 0))
        assert not any(t.is_alive() for t in self.threads), "calls still running"


def sigterm(side) -> None:
    side.proc.proc.send_signal(signal.SIGTERM)


def refused(side) -> bool:
    host, port = side.url.removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def traces(side) -> dict[str, tuple[int, str, int]]:
    with sqlite3.connect(side.traces) as db:
        return {r[0]: (r[1], r[2], r[3]) for r in db.execute("select trace_id, status, outcome, stream from decisions")}


def drain_args(stock: bool, seconds: float) -> list[str]:
    return ["--set", f"routecar_drain_timeout={seconds}"] if stock else ["--drain-timeout", str(seconds)]


def slow(fake, chunk_delay: float, chunks: int, delay: float) -> None:
    fake.set_script("mistral", [{"match": {"stream": True}, "chunks": chunks, "chunk_delay": chunk_delay},
                                {"delay": delay}])


@pytest.mark.parametrize("stock", [False, True], ids=["routecar-run", "mitmdump-s"])
def test_sigterm_lets_in_flight_calls_finish_and_traces_every_one(sidecar, fake, stock):
    side = sidecar(*drain_args(stock, 30), mode="reverse", stock=stock)
    slow(fake, chunk_delay=0.5, chunks=6, delay=3)
    calls = Calls(side)
    calls.start(N_STREAMS, N_WHOLE)
    poll(lambda: len(fake.requests("mistral")) == N_STREAMS + N_WHOLE, 20, "every call reached the provider")
    sigterm(side)
    poll(lambda: refused(side), 5, "the listener is closed")
    assert any(t.is_alive() for t in calls.threads)   # ... while calls are still in flight
    calls.join(30)
    assert side.proc.proc.wait(30) == 0
    assert [r[:2] for r in calls.results.values()] == [("ok", "[fake:mistral] model=mistral-small-3 ok")] * 6
    rows = traces(side)
    assert sorted(rows[r[2]] for r in calls.results.values()) == [(200, "ok", 0)] * 3 + [(200, "ok", 1)] * 3
    log = side.log()
    assert "Traceback" not in log and "Error" not in log
    assert stock or "draining 6 call(s)" in log   # (stock mitmdump runs with -q: no info lines)


@pytest.mark.parametrize("stock", [False, True], ids=["routecar-run", "mitmdump-s"])
def test_at_the_drain_deadline_streams_get_an_sse_error_and_others_503(sidecar, fake, stock):
    side = sidecar(*drain_args(stock, 1), mode="reverse", stock=stock)
    slow(fake, chunk_delay=1, chunks=40, delay=40)
    calls = Calls(side)
    calls.start(N_STREAMS, N_WHOLE)
    poll(lambda: len(fake.requests("mistral")) == N_STREAMS + N_WHOLE, 20, "every call reached the provider")
    t0 = time.monotonic()
    sigterm(side)
    calls.join(20)
    assert time.monotonic() - t0 < 15   # the deadline, not the 40 s calls
    assert side.proc.proc.wait(20) == 0
    for i, (kind, err, trace_id) in calls.results.items():
        assert kind == "error" and trace_id, (i, err)
        if i < N_STREAMS:   # the stream had started: an SSE error event the SDK raises
            assert isinstance(err, openai.APIError) and err.code == "shutting_down", err
        else:
            assert isinstance(err, openai.APIStatusError) and err.status_code == 503, err
            assert err.body["code"] == "shutting_down" and "drain deadline" in err.body["message"]
    rows = traces(side)
    got = sorted(rows[r[2]] for r in calls.results.values())
    assert got == [(200, "shutting_down", 1)] * 3 + [(503, "shutting_down", 0)] * 3
    with sqlite3.connect(side.traces) as db:   # the cut attempt says so, and blames no provider
        classes = [r[0] for r in db.execute("select error_class from attempts")]
    assert classes.count("shutting_down") == 3 and "server_error" not in classes
    assert "Traceback" not in side.log()


@pytest.mark.parametrize("stock", [False, True], ids=["routecar-run", "mitmdump-s"])
def test_a_second_sigterm_ends_the_drain_at_once(sidecar, fake, stock):
    side = sidecar(*drain_args(stock, 60), mode="reverse", stock=stock)
    slow(fake, chunk_delay=1, chunks=40, delay=40)
    calls = Calls(side)
    calls.start(1, 1)
    poll(lambda: len(fake.requests("mistral")) == 2, 20, "both calls reached the provider")
    sigterm(side)
    poll(lambda: refused(side), 10, "the drain started (the listener is closed)")
    t0 = time.monotonic()
    sigterm(side)
    calls.join(15)
    assert time.monotonic() - t0 < 10
    assert side.proc.proc.wait(15) == 0
    codes = sorted(getattr(r[1], "code", None) or r[1].body["code"] for r in calls.results.values())
    assert codes == ["shutting_down", "shutting_down"]
    assert len(traces(side)) == 2


def test_a_new_call_on_an_open_connection_during_the_drain_is_refused_and_traced(sidecar, fake):
    side = sidecar("--drain-timeout", "30", mode="reverse")
    slow(fake, chunk_delay=0.5, chunks=8, delay=4)
    host, port = side.url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"model": "gpt-4o", "messages": MSG}).encode()
    req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\nX-Route-Policy: {SCALEWAY}\r\n\r\n").encode() + body
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(req)
        first = read_response(s)
        assert first[0] == 200   # a keep-alive connection, opened before the shutdown
        calls = Calls(side)
        calls.start(1, 0)   # keeps the drain going
        poll(lambda: len(fake.requests("mistral")) == 1, 20, "the slow call reached the provider")
        sigterm(side)
        poll(lambda: refused(side), 5, "the listener is closed")
        s.sendall(req)
        status, headers, payload = read_response(s)
    assert status == 503 and json.loads(payload)["error"]["code"] == "shutting_down"
    assert headers["connection"] == "close"
    calls.join(30)
    assert calls.results[0][:2] == ("ok", "[fake:mistral] model=mistral-small-3 ok")
    assert side.proc.proc.wait(30) == 0
    assert traces(side)[headers["x-route-trace-id"]] == (503, "shutting_down", 0)
    assert len(fake.requests("scaleway")) == 1   # the refused call never reached a provider


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "connection closed before the answer"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, "connection closed mid-answer"
        body += chunk
    return int(lines[0].split()[1]), headers, body
