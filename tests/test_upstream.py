"""upstream: try_plan over a real aiohttp session against loopback fakes, and the Relay.

Everything runs in one event loop per test: the FakeFleet (`start_async`), the
session, the relay and the real Engine built from a loopback providers file. No
proxy. Retry-After waits go through an injected `sleep` that records them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from routecar.catalog import DEFAULT_CATALOG, load_catalog
from routecar.engine import Engine, check_catalog_providers
from routecar.health import HealthTracker
from routecar.providers import load_providers
from routecar.reloading import ReloadingSource
from routecar.relay import Relay, StreamStats
from routecar.upstream import Result, Timeouts, event_end, new_session, try_plan
from tests.fakes import FakeFleet
from tests.fakes.config import write_loopback_providers

NAMES = ["openai", "anthropic", "mistral", "google", "azure", "groq", "deepseek", "scaleway"]
EU = {"rules": [["eq", "region", "eu"]]}
# mistral first, then its other entries, then azure: proves a skipped provider stays skipped.
MISTRAL_FIRST = {"rules": [["in", "provider", ["mistral", "azure"]]],
                 "rank": [["desc", "provider"], ["asc", "est_cost"]], "fallback": {"max_attempts": 4}}
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
FAST = Timeouts(connect_s=2.0, first_byte_s=5.0, stream_idle_s=5.0, deadline_s=15.0)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Harness:
    fleet: FakeFleet
    engine: Engine
    session: aiohttp.ClientSession
    relay: Relay
    sleeps: list[float] = field(default_factory=list)

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)

    async def route(self, policy: dict[str, Any], body: dict[str, Any] = BODY,
                    timeouts: Timeouts = FAST) -> Result:
        pol = self.engine.policies().parse(json.dumps(policy))
        decision = self.engine.decide(pol, body)
        return await try_plan(self.session, self.engine, decision, body, {"authorization": "Bearer app"},
                              timeouts=timeouts, sleep=self.sleep)

    def models(self, name: str) -> list[str]:
        return [r["body"]["model"] for r in self.fleet.requests(name)]


def run(tmp_path: Path, test: Callable[[Harness], Awaitable[None]], *,
        down: tuple[str, ...] = (), timeouts: Timeouts = FAST) -> None:
    """Run `test` with a fresh fleet, engine, session and relay; providers in `down` point at a closed port."""
    async def main() -> None:
        fleet = await FakeFleet(NAMES).start_async()
        try:
            dead = f"http://127.0.0.1:{closed_port()}/v1"
            path, env = write_loopback_providers(lambda n: dead if n in down else fleet.url(n),
                                                 tmp_path / "providers.yaml")
            providers = load_providers(path)
            catalog = ReloadingSource(str(DEFAULT_CATALOG),
                                      lambda s: check_catalog_providers(load_catalog(s), providers), time.monotonic)
            engine = Engine(catalog, providers, env, HealthTracker(time.monotonic))
            relay = Relay(timeouts)
            await relay.start()
            session = new_session(timeouts)
            try:
                await test(Harness(fleet, engine, session, relay))
            finally:
                await session.close()
                await relay.stop()
        finally:
            await fleet.stop_async()
    asyncio.run(asyncio.wait_for(main(), 30))


def content(result: Result) -> str:
    return json.loads(result.body)["choices"][0]["message"]["content"]


# -- try_plan -----------------------------------------------------------------------------

def test_first_entry_answers(tmp_path):
    async def t(h: Harness) -> None:
        res = await h.route(EU)
        assert (res.status, res.entry_id, len(res.attempts)) == (200, "mistral/mistral-small-3", 1)
        assert content(res) == "[fake:mistral] model=mistral-small-3 ok"
        assert res.attempts[0]["error_class"] == "ok"
        assert h.engine.health.snapshot()["mistral/mistral-small-3"]["samples"] == 1
    run(tmp_path, t)


@pytest.mark.parametrize("status,error_class", [(500, "server_error"), (502, "server_error"),
                                                (503, "server_error"), (504, "server_error"),
                                                (529, "overloaded"), (429, "rate_limited")])
def test_retryable_status_moves_to_next_entry(tmp_path, status, error_class):
    async def t(h: Harness) -> None:
        h.fleet.set_script("mistral", [{"status": status}])
        res = await h.route(EU)
        assert res.status == 200 and res.entry_id == "scaleway/mistral-small-3"
        assert [(a["entry"], a["status"], a["error_class"]) for a in res.attempts] == [
            ("mistral/mistral-small-3", status, error_class), ("scaleway/mistral-small-3", 200, "ok")]
        assert content(res).startswith("[fake:scaleway]")
        assert h.sleeps == []   # another provider owes us no wait
        assert h.engine.health.snapshot()["mistral/mistral-small-3"]["consecutive_failures"] == 1
    run(tmp_path, t)


@pytest.mark.parametrize("retry_after,sleeps", [("1", [1.0]), ("30", [])])
def test_retry_after_on_same_provider(tmp_path, retry_after, sleeps):
    async def t(h: Harness) -> None:
        h.fleet.set_script("scaleway", [{"status": 429, "retry_after": retry_after, "times": 1}])
        res = await h.route({"rules": [["eq", "provider", "scaleway"]]})
        assert res.status == 200 and len(res.attempts) == 2
        assert h.sleeps == sleeps
        assert h.models("scaleway") == ["mistral-small-3.2-24b-instruct", "llama-3.3-70b-instruct"]
    run(tmp_path, t)


def test_connect_refused_moves_on(tmp_path):
    async def t(h: Harness) -> None:
        res = await h.route(EU)
        assert res.entry_id == "scaleway/mistral-small-3"
        assert res.attempts[0]["error_class"] == "connect_error" and res.attempts[0]["status"] is None
    run(tmp_path, t, down=("mistral",))


def test_first_byte_timeout_starts_when_connected(tmp_path):
    # connect_s + first_byte_s (5.3 s) would let the 2 s answer through: first_byte_s alone must not.
    timeouts = Timeouts(connect_s=5.0, first_byte_s=0.3, stream_idle_s=5.0, deadline_s=15.0)

    async def t(h: Harness) -> None:
        h.fleet.set_script("mistral", [{"delay": 2}])
        res = await h.route(EU, timeouts=timeouts)
        assert res.entry_id == "scaleway/mistral-small-3"
        assert res.attempts[0]["error_class"] == "timeout"
    run(tmp_path, t, timeouts=timeouts)


def test_deadline_bounds_every_attempt(tmp_path):
    timeouts = Timeouts(connect_s=5.0, first_byte_s=10.0, stream_idle_s=5.0, deadline_s=0.5)

    async def t(h: Harness) -> None:
        h.fleet.set_script("mistral", [{"delay": 3}])
        res = await h.route(EU, timeouts=timeouts)
        assert res.status == 502 and res.error is not None
        assert [a["error_class"] for a in res.attempts] == ["timeout"]
        assert h.fleet.requests("scaleway") == []
    run(tmp_path, t, timeouts=timeouts)


@pytest.mark.parametrize("status", [401, 403])
def test_auth_error_skips_the_whole_provider(tmp_path, status):
    async def t(h: Harness) -> None:
        h.fleet.set_script("mistral", [{"status": status}])
        res = await h.route(MISTRAL_FIRST)
        assert res.status == 200 and res.entry_id == "azure/gpt-5.5-mini@eu"
        assert [a["error_class"] for a in res.attempts] == ["auth", "ok"]
        assert len(h.fleet.requests("mistral")) == 1
    run(tmp_path, t)


def test_context_length_moves_to_a_bigger_window_only(tmp_path):
    async def t(h: Harness) -> None:
        h.fleet.set_script("mistral", [{"status": 400}])   # the fake's 400 is context_length_exceeded
        res = await h.route(EU)
        assert res.status == 200 and res.entry_id == "azure/gpt-5.5-mini@eu"   # 400k > 128k
        assert [a["error_class"] for a in res.attempts] == ["context_length", "ok"]
        assert h.fleet.requests("scaleway") == []   # same 128k window: pointless
        assert "mistral/mistral-small-3" not in h.engine.health.snapshot()   # not the entry's fault
    run(tmp_path, t)


def test_other_client_error_is_returned_as_is(tmp_path):
    body = {"error": {"message": "bad temperature", "type": "invalid_request_error",
                      "code": "invalid_value", "param": "temperature"}}

    async def t(h: Harness) -> None:
        h.fleet.set_script("mistral", [{"status": 422, "body": body}])
        res = await h.route(EU)
        assert (res.status, json.loads(res.body), len(res.attempts)) == (422, body, 1)
        assert res.error is None and res.entry_id == "mistral/mistral-small-3"
        assert h.fleet.requests("scaleway") == []
    run(tmp_path, t)


def test_all_failed_lists_every_attempt_and_stays_in_policy(tmp_path):
    async def t(h: Harness) -> None:
        for name in NAMES:
            h.fleet.set_script(name, [{"status": 503}])
        res = await h.route({"rules": [["eq", "provider", "mistral"]], "fallback": {"max_attempts": 5}})
        assert res.status == 502
        err = json.loads(res.body)["error"]
        assert err["code"] == "upstream_failed"
        assert [(a["entry"], a["status"], a["error_class"]) for a in err["attempts"]] == [
            ("mistral/mistral-small-3", 503, "server_error"), ("mistral/mistral-medium-3", 503, "server_error"),
            ("mistral/mistral-large-3", 503, "server_error")]
        assert all(a["duration_ms"] > 0 for a in err["attempts"])
        assert all(h.fleet.requests(n) == [] for n in NAMES if n != "mistral")
    run(tmp_path, t)


def test_max_attempts_caps_the_walk(tmp_path):
    async def t(h: Harness) -> None:
        for name in NAMES:
            h.fleet.set_script(name, [{"status": 500}])
        res = await h.route(EU)
        assert res.status == 502 and len(res.attempts) == 3
        assert h.fleet.requests("azure") == [] and h.fleet.requests("google") == []
    run(tmp_path, t)


def test_repeated_failures_cool_an_entry_down(tmp_path):
    async def t(h: Harness) -> None:
        h.fleet.set_script("mistral", [{"status": 500}])
        for _ in range(3):
            assert (await h.route(EU)).entry_id == "scaleway/mistral-small-3"
        assert h.engine.health.snapshot()["mistral/mistral-small-3"]["healthy"] is False
        h.fleet.clear_requests()
        res = await h.route(EU)
        assert res.entry_id == "scaleway/mistral-small-3" and len(res.attempts) == 1
        assert h.fleet.requests("mistral") == []
        decision = h.engine.decide(h.engine.policies().parse(json.dumps(EU)), BODY)
        assert decision.entries[-1].id == "mistral/mistral-small-3"   # ranked after the healthy ones
    run(tmp_path, t)


# -- streams ------------------------------------------------------------------------------

STREAM = dict(BODY, stream=True)


async def fetch(relay: Relay, path: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{relay.port}{path}") as r:
        return r.status, dict(r.headers), await r.read()


def park(h: Harness, res: Result, done: list[StreamStats]) -> str:
    return h.relay.register(res.status, res.headers, stream=res.stream, body=res.body, capture=True,
                            on_done=done.append)


def events(raw: bytes) -> list[Any]:
    out = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: "):
            data = block[6:]
            out.append(data.decode() if data == b"[DONE]" else json.loads(data))
    return out


def test_stream_fallback_before_first_byte_then_relayed_whole(tmp_path):
    async def t(h: Harness) -> None:
        h.fleet.set_script("mistral", [{"status": 500}])
        h.fleet.set_script("scaleway", [{"chunks": 4}])
        res = await h.route(EU, body=STREAM)
        assert res.stream is not None and res.entry_id == "scaleway/mistral-small-3"
        assert event_end(res.body) == len(res.body) > 0   # the first event, read before committing
        done: list[StreamStats] = []
        status, headers, raw = await fetch(h.relay, park(h, res, done))
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
        evs = events(raw)
        assert evs[-1] == "[DONE]"
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in evs[:-1])
        assert text == "[fake:scaleway] model=mistral-small-3.2-24b-instruct ok"
        [stats] = done
        assert stats.error is None and not stats.client_gone and bytes(stats.captured) == raw
    run(tmp_path, t)


def test_stream_cut_before_first_event_is_retried(tmp_path):
    async def t(h: Harness) -> None:
        h.fleet.set_script("mistral", [{"cut_after_chunks": 0}])
        res = await h.route(EU, body=STREAM)
        # cut_after_chunks=0 still sends the role event: that commits, the cut comes later.
        assert res.entry_id == "mistral/mistral-small-3"
        h.fleet.set_script("mistral", [{"close": True}])
        res = await h.route(EU, body=STREAM)
        assert res.entry_id == "scaleway/mistral-small-3"
        assert res.attempts[0]["error_class"] == "connection_reset"
    run(tmp_path, t)


def test_stream_opening_with_an_error_event_is_retried(tmp_path):
    async def t(h: Harness) -> None:
        err = 'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
        h.fleet.set_script("mistral", [{"status": 200, "body": err,
                                        "headers": {"Content-Type": "text/event-stream"}}])
        res = await h.route(EU, body=STREAM)
        assert res.entry_id == "scaleway/mistral-small-3"
        assert res.attempts[0]["status"] == 200 and res.attempts[0]["error_class"] == "server_error"
    run(tmp_path, t)


def test_stream_cut_midway_ends_with_an_error_event(tmp_path):
    async def t(h: Harness) -> None:
        h.fleet.set_script("mistral", [{"chunks": 5, "cut_after_chunks": 2, "chunk_delay": 0.1}])
        res = await h.route(EU, body=STREAM)
        assert res.stream is not None
        done: list[StreamStats] = []
        status, _, raw = await fetch(h.relay, park(h, res, done))
        evs = events(raw)
        assert status == 200 and "[DONE]" not in evs
        assert evs[-1]["error"]["code"] == "stream_interrupted"
        assert [e["choices"][0]["delta"].get("content") is not None for e in evs[:-1]] == [True] * 3
        assert done[0].error is not None and "broke" in done[0].error
    run(tmp_path, t)


def test_client_gone_aborts_the_upstream_read(tmp_path):
    async def t(h: Harness) -> None:
        h.fleet.set_script("mistral", [{"chunks": 50, "chunk_delay": 0.2}])
        res = await h.route(EU, body=STREAM)
        done: list[StreamStats] = []
        path = park(h, res, done)
        reader, writer = await asyncio.open_connection("127.0.0.1", h.relay.port)
        writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        await writer.drain()
        await reader.readuntil(b"data: ")   # the stream has started
        writer.close()
        await writer.wait_closed()
        async with asyncio.timeout(5):      # far less than the 10 s the whole stream takes
            while not done:
                await asyncio.sleep(0.02)
        assert done[0].client_gone and done[0].error is None
        assert res.stream is not None and res.stream.closed
    run(tmp_path, t)


def test_relay_forwards_whole_events_only():
    assert event_end(b"data: a\n\ndata: b") == len(b"data: a\n\n")
    assert event_end(b"data: a\r\n\r\n") == len(b"data: a\r\n\r\n")
    assert event_end(b"data: a\n") == 0


def test_unknown_token_is_a_502(tmp_path):
    async def t(h: Harness) -> None:
        status, _, raw = await fetch(h.relay, Relay.PREFIX + "nope")
        assert status == 502 and json.loads(raw)["error"]["code"] == "relay_expired"
    run(tmp_path, t)


def test_operator_key_split_between_first_read_and_stream_is_scrubbed(tmp_path):
    """The first read (kept as the prefix) ends inside an echoed key; the rest comes later. The
    relay scrubs prefix and stream as one, so neither half of the key leaves alone."""
    from routecar.keyscrub import KeyScrubber

    async def t(h: Harness) -> None:
        first = 'data: {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}\n\n'
        second = 'data: {"choices": [{"index": 0, "delta": {"content": "you sent {authorization} ok"}}]}\n\n'
        # The echoed `Bearer <key>` is split in two writes: the first ends with "fake-ke".
        key = "fake-key-mistral"
        head, tail = second.split("{authorization}")
        h.fleet.set_script("mistral", [{"raw_chunks": [first + head + "Bearer " + key[:7], key[7:] + tail,
                                                       "data: [DONE]\n\n"], "chunk_delay": 0.2}])
        res = await h.route(EU, body=STREAM)
        assert res.stream is not None and res.body.endswith(key[:7].encode())  # the split is real
        done: list[StreamStats] = []
        path = h.relay.register(res.status, res.headers, stream=res.stream, body=res.body, capture=True,
                                on_done=done.append, scrub=KeyScrubber(h.engine.operator_keys()))
        status, _, raw = await fetch(h.relay, path)
        assert status == 200 and key.encode() not in raw and b"fake-ke" not in raw
        assert events(raw)[1]["choices"][0]["delta"]["content"] == "you sent Bearer [redacted] ok"
        assert key.encode() not in bytes(done[0].captured)
    run(tmp_path, t)
