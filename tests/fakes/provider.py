"""Loopback fake providers for tests and benchmarks, speaking every API shape.

One process (or one background thread) serves several named providers, each
on its own 127.0.0.1 port. Every provider answers OpenAI ``POST .../chat/completions``,
OpenAI ``POST .../responses`` (fakes/responses.py) and Anthropic
``POST .../messages`` (fakes/messages.py: ``x-api-key`` or Bearer auth,
``anthropic-version`` required), plain JSON or SSE streaming, with a message
that says who answered; it records every request it receives (on any path:
others get a 404, so a test can prove that nothing reached a provider) and can
be scripted to fail in specific ways, the same script for every shape.

Command line (writes ``{"openai": port, ...}`` to the ready file once all
providers listen, then serves until SIGTERM/SIGINT)::

    python -m tests.fakes.provider --name openai --name mistral \\
        --require-key openai=sk-test --ready-file /tmp/fakes.json

In-process, from synchronous code (own thread and event loop)::

    fleet = FakeFleet(["openai", "mistral"]).start()
    client = openai.OpenAI(base_url=fleet.url("mistral"), api_key="k")
    fleet.set_script("mistral", [{"status": 429, "times": 1}])
    fleet.requests("mistral")      # list of recorded requests
    fleet.stop()

or inside a running event loop: ``await fleet.start_async()`` /
``await fleet.stop_async()``.

HTTP control endpoints on every provider port: ``GET|DELETE /_fake/requests``,
``GET|POST|DELETE /_fake/script``. Script rules are documented in
``RULE_KEYS``; the first matching rule wins and a rule with ``times`` is used
up after that many matches.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes import chat, messages, responses
from tests.fakes.chat import error_body
from tests.fakes.common import abort
from tests.fakes.compress import Encoder, choose

HOST = "127.0.0.1"
MAX_RECORDS = 10_000  # benchmarks send far more; keep memory bounded

RULE_KEYS = {
    "match": "dict: body fields that must be equal (special key 'path': request path suffix)",
    "times": "int: the rule is used up after this many matches",
    "status": "int: HTTP status (>=400 gets an OpenAI error body unless 'body' is given)",
    "body": "dict (JSON) or str (text/plain): response body instead of the default",
    "headers": "dict: extra response headers",
    "retry_after": "str: Retry-After header value",
    "delay": "float: seconds to wait before sending headers",
    "chunk_delay": "float: seconds between SSE chunks",
    "chunks": "int: number of content chunks in a streamed answer",
    "content": "str: assistant message content instead of the default",
    "cut_after_chunks": "int: abort the connection after this many content chunks",
    "close": "bool: drop the connection before any response",
    "tool_call": "dict {name, arguments}: also answer with this tool call (chat tool_calls, "
                 "Messages tool_use, Responses function_call)",
    "finish_reason": "str: stop, length, tool_calls, content_filter or stop_sequence (chat's words, "
                     "mapped to each shape's stop reason)",
    "compress": "str: 'auto' (honour Accept-Encoding), or gzip/deflate/br/zstd even when not "
                "asked; another name is sent as a header over a plain body (see compress.py)",
    "content_type": "str: Content-Type of a 'body' answer (e.g. application/json over garbage)",
    "echo_headers": "bool: the answer echoes the request's headers (error message, content, x-echo-* headers)",
    "raw_chunks": "list of str: write the body verbatim in these pieces ('{authorization}' is replaced "
                  "by the request's Authorization header); content type from 'headers' or SSE",
}

MODELS = ["gpt-4o", "gpt-4o-mini", "mistral-small", "claude-sonnet", "gemini-flash"]

def validate_rules(rules: Any) -> list[dict[str, Any]]:
    """Check a script (list of rule dicts); raise ValueError naming the problem."""
    if not isinstance(rules, list):
        raise ValueError("script must be a JSON list of rules")
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise ValueError(f"rules[{i}] must be an object")
        unknown = sorted(set(rule) - set(RULE_KEYS))
        if unknown:
            raise ValueError(f"rules[{i}]: unknown key(s) {unknown}; known: {sorted(RULE_KEYS)}")
        if "match" in rule and not isinstance(rule["match"], dict):
            raise ValueError(f"rules[{i}].match must be an object")
    # Copy so that 'times' bookkeeping never mutates the caller's data.
    return [dict(rule) for rule in rules]


class FakeProvider:
    """One fake provider: its records, its script and its aiohttp app."""

    def __init__(self, name: str, require_key: str | None = None) -> None:
        self.name = name
        self.require_key = require_key
        self._default_key = require_key
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_RECORDS)
        # Ids of the Responses answers given, for `previous_response_id` (server state).
        self.response_ids: collections.deque[str] = collections.deque(maxlen=1000)
        self._rules: list[dict[str, Any]] = []
        # Scripts are set from test threads and consumed on the server loop.
        self._lock = threading.Lock()

    # -- in-process control -------------------------------------------------

    def set_script(self, rules: list[dict[str, Any]]) -> None:
        checked = validate_rules(rules)
        with self._lock:
            self._rules = checked

    def script(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(rule) for rule in self._rules]

    def reset(self) -> None:
        """Clear records and script; restore the key given at construction."""
        with self._lock:
            self._rules = []
        self.require_key = self._default_key
        self.records.clear()
        self.response_ids.clear()

    def _take_rule(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            for rule in self._rules:
                match = rule.get("match") or {}
                if not all(
                    path.endswith(v) if k == "path" else body.get(k) == v for k, v in match.items()
                ):
                    continue
                if "times" in rule:
                    if rule["times"] <= 0:
                        continue
                    rule["times"] -= 1
                return rule
        return {}

    # -- HTTP ----------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/_fake/requests", self._h_requests)
        app.router.add_route("*", "/_fake/script", self._h_script)
        app.router.add_get("/v1/models", self._h_models)
        app.router.add_post(r"/{prefix:.*}chat/completions", self._h_chat)
        app.router.add_post(r"/{prefix:.*}responses", self._h_responses)
        app.router.add_post(r"/{prefix:.*}messages", self._h_messages)
        app.router.add_route("*", r"/{tail:.*}", self._h_other)   # last: anything else, recorded
        return app

    async def _h_other(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self._record(request, raw.decode("utf-8", "replace"))
        body = error_body(404, f"fake {self.name}: no route {request.method} {request.raw_path} "
                               f"(body: {raw[:200].decode('utf-8', 'replace')})")
        return web.json_response(body, status=404, headers={"x-fake-provider": self.name})

    async def _h_requests(self, request: web.Request) -> web.Response:
        if request.method == "DELETE":
            self.records.clear()
            return web.json_response({"cleared": True})
        return web.json_response(list(self.records))

    async def _h_script(self, request: web.Request) -> web.Response:
        if request.method == "DELETE":
            self.set_script([])
        elif request.method == "POST":
            try:
                self.set_script(await request.json())
            except ValueError as e:  # includes JSONDecodeError
                return web.json_response({"error": str(e)}, status=400)
        return web.json_response(self.script())

    def _authorized(self, request: web.Request) -> bool:
        if self.require_key is None:
            return True
        auth = request.headers.get("Authorization", "")
        return auth == f"Bearer {self.require_key}" or self.require_key in (
            request.headers.get("api-key"),
            request.headers.get("x-api-key"),
        )

    async def _h_models(self, request: web.Request) -> web.Response:
        self._record(request, None)
        if not self._authorized(request):
            return web.json_response(error_body(401), status=401)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": self.name} for m in MODELS]
        return web.json_response({"object": "list", "data": data})

    def _record(self, request: web.Request, body: Any) -> None:
        self.records.append(
            {
                "provider": self.name,
                "time": time.time(),
                "method": request.method,
                "path": request.path,
                "raw_path": request.raw_path,
                "query_string": request.query_string,
                "query": [[k, v] for k, v in request.query.items()],
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers
                ],
                "body": body,
            }
        )

    async def _accept(self, request: web.Request, errors: Any = error_body,
                      authorized: Any = None) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]] | web.Response:
        """Record the request, check it and its key, apply the script. Returns (body, rule,
        headers) to answer normally, or the response to send instead (`errors(status, msg)`
        builds error bodies in the shape's format)."""
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        self._record(request, body if body is not None else raw.decode("utf-8", "replace"))
        if not isinstance(body, dict):
            return web.json_response(errors(400, "Request body is not a JSON object."), status=400)
        if not (authorized or self._authorized)(request):
            return web.json_response(errors(401, None), status=401)

        rule = self._take_rule(request.path, body)
        if rule.get("delay"):
            await asyncio.sleep(float(rule["delay"]))
        if rule.get("close"):
            return abort(request)

        headers = {str(k): str(v) for k, v in (rule.get("headers") or {}).items()}
        if "retry_after" in rule:
            headers["Retry-After"] = str(rule["retry_after"])
        status = int(rule.get("status", 200))
        coding = choose(rule.get("compress"), request.headers.get("Accept-Encoding"))
        if coding:
            headers["Content-Encoding"] = coding
        echo = json.dumps(dict(request.headers)) if rule.get("echo_headers") else None
        if echo is not None:  # what a careless gateway does: say back what it was sent
            headers.update({f"x-echo-{k.lower()}": v for k, v in request.headers.items()})
            rule = dict(rule, content=echo)  # a copy: the script keeps its own rule
        if "raw_chunks" in rule:
            return await self._raw(request, rule, headers, status)
        if status >= 400 or "body" in rule:
            if echo is not None and "body" not in rule:
                return self._fixed_response(status, errors(status, f"rejected request headers: {echo}"),
                                            headers, rule.get("content_type"), coding)
            return self._fixed_response(status, rule["body"] if "body" in rule else errors(status, None),
                                        headers, rule.get("content_type"), coding)
        return body, rule, headers

    async def _raw(self, request: web.Request, rule: Mapping[str, Any], headers: dict[str, str],
                   status: int) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers=headers)
        if "content-type" not in {k.lower() for k in headers}:
            resp.content_type = "text/event-stream"
        await resp.prepare(request)
        auth = request.headers.get("Authorization", "")
        for i, piece in enumerate(rule["raw_chunks"]):
            if i and rule.get("chunk_delay"):  # separate writes reach the reader as separate reads
                await asyncio.sleep(float(rule["chunk_delay"]))
            await resp.write(str(piece).replace("{authorization}", auth).encode())
        await resp.write_eof()
        return resp

    async def _h_chat(self, request: web.Request) -> web.StreamResponse:
        got = await self._accept(request)
        if isinstance(got, web.StreamResponse):
            return got
        return await chat.answer(request, self.name, *got)

    async def _h_responses(self, request: web.Request) -> web.StreamResponse:
        got = await self._accept(request)
        if isinstance(got, web.StreamResponse):
            return got
        return await responses.answer(request, self.name, *got, self.response_ids)

    async def _h_messages(self, request: web.Request) -> web.StreamResponse:
        got = await self._accept(request, messages.error_body, self._authorized_anthropic)
        if isinstance(got, web.StreamResponse):
            return got
        return await messages.answer(request, self.name, *got)

    def _authorized_anthropic(self, request: web.Request) -> bool:
        """Anthropic's auth: the key in `x-api-key` (older SDKs, curl) or as a Bearer token
        (anthropic SDK 2.x); never in Azure's `api-key`."""
        key = self.require_key
        return (key is None or request.headers.get("x-api-key") == key
                or request.headers.get("Authorization") == f"Bearer {key}")

    def _fixed_response(self, status: int, body: Any, headers: dict[str, str],
                        content_type: str | None = None, coding: str | None = None) -> web.Response:
        content_type = content_type or headers.pop("Content-Type", None)
        if isinstance(body, str):
            data, ctype = body.encode(), content_type or "text/plain"
        else:
            data, ctype = json.dumps(body).encode(), content_type or "application/json"
        if coding:
            data = Encoder(coding).whole(data)
        return web.Response(status=status, body=data, headers={**headers, "Content-Type": ctype})

class FakeFleet:
    """Several named fake providers, each on its own 127.0.0.1 port.

    ``port_base=0`` picks free ports; otherwise provider i listens on
    ``port_base + i``. ``require_keys`` maps provider name to the API key it
    insists on (others answer 401).
    """

    def __init__(
        self,
        names: Iterable[str],
        *,
        port_base: int = 0,
        require_keys: Mapping[str, str] | None = None,
    ) -> None:
        self.names = list(dict.fromkeys(names))
        if not self.names:
            raise ValueError("FakeFleet needs at least one provider name")
        keys = dict(require_keys or {})
        unknown = sorted(set(keys) - set(self.names))
        if unknown:
            raise ValueError(f"require_keys names unknown providers: {unknown}")
        self.port_base = port_base
        self.providers = {n: FakeProvider(n, keys.get(n)) for n in self.names}
        self.ports: dict[str, int] = {}
        self._runners: list[web.AppRunner] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- async API -------------------------------------------------------------

    async def start_async(self) -> FakeFleet:
        for i, name in enumerate(self.names):
            # handler_cancellation: like a real provider, stop generating when the caller hangs up
            # (and a stopping fleet never waits for a 40 s scripted delay nobody listens to any more).
            runner = web.AppRunner(self.providers[name].app(), access_log=None, handle_signals=False,
                                   handler_cancellation=True)
            await runner.setup()
            self._runners.append(runner)
            port = self.port_base + i if self.port_base else 0
            site = web.TCPSite(runner, HOST, port, reuse_address=True)
            await site.start()
            self.ports[name] = runner.addresses[0][1]
        return self

    async def stop_async(self) -> None:
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    async def __aenter__(self) -> FakeFleet:
        return await self.start_async()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_async()

    # -- threaded API ----------------------------------------------------------

    def start(self, timeout: float = 10.0) -> FakeFleet:
        """Serve from a background thread with its own event loop."""
        if self._thread is not None:
            raise RuntimeError("FakeFleet already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fake-fleet", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self.start_async(), loop).result(timeout)
        except BaseException:
            self.stop(timeout)
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.stop_async(), loop).result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> FakeFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses and control -------------------------------------------------

    def base(self, name: str) -> str:
        """``http://127.0.0.1:PORT`` of one provider."""
        return f"http://{HOST}:{self.ports[name]}"

    def url(self, name: str) -> str:
        """OpenAI-style base URL (``.../v1``) of one provider."""
        return self.base(name) + "/v1"

    def requests(self, name: str) -> list[dict[str, Any]]:
        return list(self.providers[name].records)

    def clear_requests(self, name: str | None = None) -> None:
        for n in [name] if name else self.names:
            self.providers[n].records.clear()

    def set_script(self, name: str, rules: list[dict[str, Any]]) -> None:
        self.providers[name].set_script(rules)

    def set_required_key(self, name: str, key: str | None) -> None:
        """Make provider ``name`` answer 401 unless a request carries ``key`` (None: any)."""
        self.providers[name].require_key = key

    def reset(self) -> None:
        """Clear every provider's records, script and set_required_key()."""
        for provider in self.providers.values():
            provider.reset()


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON to a temp file next to ``path`` and rename it into place."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, target)


def _parse_keys(pairs: list[str]) -> dict[str, str]:
    keys: dict[str, str] = {}
    for pair in pairs:
        name, sep, key = pair.partition("=")
        if not sep or not name or not key:
            raise SystemExit(f"--require-key expects NAME=KEY, got {pair!r}")
        keys[name] = key
    return keys


async def _serve(fleet: FakeFleet, ready_file: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await fleet.start_async()
    try:
        if ready_file:
            write_json_atomic(ready_file, fleet.ports)
        await stop.wait()
    finally:
        await fleet.stop_async()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.provider",
        description="Loopback fake OpenAI-compatible providers.",
        epilog="example: python -m tests.fakes.provider --name openai --name mistral "
        "--ready-file /tmp/fakes.json",
    )
    parser.add_argument("--name", action="append", required=True, help="provider name (repeat)")
    parser.add_argument("--port-base", type=int, default=0, help="0: free ports; N: N, N+1, ...")
    parser.add_argument("--ready-file", help='write {"name": port, ...} here once listening')
    parser.add_argument(
        "--require-key", action="append", default=[], metavar="NAME=KEY",
        help="provider NAME answers 401 unless the request carries KEY",
    )
    args = parser.parse_args(argv)
    try:
        fleet = FakeFleet(args.name, port_base=args.port_base, require_keys=_parse_keys(args.require_key))
    except ValueError as e:
        parser.error(str(e))
    asyncio.run(_serve(fleet, args.ready_file))


if __name__ == "__main__":
    main()
