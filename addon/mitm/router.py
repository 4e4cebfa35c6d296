"""routecar's mitmproxy addon: the only place where flows meet the routing core.

`routecar run` loads `Router` into its lean master; stock mitmproxy loads it
through the script `addon/mitm/addon.py`:

    mitmdump -s addon/mitm/addon.py --set connection_strategy=lazy

A request to a provider host (any request in reverse mode) is *governed* when it
carries a policy or tenant header, comes from a known tenant, or a default is
configured. Governed requests fail closed (`routecar.governance` classifies them):
`POST <base>/chat/completions` is routed (evaluated, tried against the ranked
entries with the operator's keys, answered with `x-route-*` headers), an operator
passthrough prefix is forwarded minus the routing headers, anything else is
refused with 4xx `unsupported_endpoint`; each of them is traced. Ungoverned
requests and other hosts pass through untouched. `/x/...` dry-run endpoints are
answered at `routecar.local` (regular mode) or at the sidecar's own address
(reverse mode).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any

import aiohttp
from mitmproxy import ctx, exceptions, http
from mitmproxy.net.http import http1

from ..apis import SHAPES, Reshape
from ..bodies import identity_body, parse_body
from ..engine import Engine, client_api_keys
from ..errors import RoutecarError, ShuttingDown
from ..governance import LOCAL_HOST, ROUTING_HEADERS, Governance, Kind, check_routing_headers, has_routing_header
from ..keyscrub import KeyScrubber
from ..policy import Decision
from ..relay import Relay, StreamStats, stream_health
from ..traces.process import ProcessTraceWriter
from ..traces.store import default_traces_path
from ..traces.writer import TraceWriter
from ..upstream import Result, Timeouts, new_session, try_plan
from .drain import Drain
from .flows import (check_forwarded, classify, decoded_headers, error_body, header_pairs, log_how_to_use,
                    make_response, mode_of, new_trace_id, proxy_user, redact_headers, request_bytes)
from ..telemetry import sidecar_state
from .observe import RouterTelemetry
from .options import add_options, close_lookup, read_settings
from .state import Routed, caller_shape, models_answer, route_headers, summary, trace_record

log = logging.getLogger("routecar")

META = "routecar"


class Router:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.writer: TraceWriter | ProcessTraceWriter | None = None
        self.traces_max_age: float | None = None
        self.relay: Relay | None = None
        self.session: aiohttp.ClientSession | None = None
        self.timeouts = Timeouts()
        self.drain = Drain()
        self.governance = Governance(frozenset())
        self._scrubber, self._scrubber_keys = KeyScrubber(()), ()
        self.routed = self.passed = self.refused = 0
        self._catalogs_traced: set[str] = set()  # versions whose snapshot went to the store
        self.telemetry = RouterTelemetry()

    # -- configuration ----------------------------------------------------------------
    def load(self, loader: Any) -> None:
        add_options(loader)
        self.telemetry.load(loader)

    def configure(self, updated: set[str]) -> None:
        if not any(k.startswith("routecar_") for k in updated) and self.engine is not None:
            if "mode" in updated:
                self._set_allow_hosts()
            return
        previous = self.engine
        try:
            settings = read_settings(ctx.options, previous)
        except (RoutecarError, OSError) as e:
            raise exceptions.OptionsError(f"routecar: {getattr(e, 'message', None) or e}") from e
        self.engine, self.governance = settings.engine, settings.governance
        self.timeouts, self.traces_max_age = settings.timeouts, settings.traces_max_age
        self.drain.timeout_s = settings.drain_timeout
        close_lookup(previous.tenants if previous else None, self.engine)
        self.telemetry.configure(updated, ctx.options, lambda: sidecar_state(
            self.engine, self.writer.stats() if self.writer else None))   # the engine in service, when scraped
        self._set_allow_hosts()

    def _set_allow_hosts(self) -> None:
        """Decrypt only provider hosts: other HTTPS is tunnelled and never sees our CA."""
        o = ctx.options
        if not (self.engine and o.routecar_intercept_only_providers) or o.ignore_hosts:
            return
        if any(not m.startswith("regular") for m in o.mode):
            return  # reverse/other modes: the target itself must stay intercepted
        hosts = sorted(self.engine.providers.intercept_hosts | {LOCAL_HOST})
        # `\.*`: a fully qualified `api.openai.com.` is the same host (mitmproxy matches case-insensitively).
        patterns = [rf"^{re.escape(h)}\.*:\d+$" for h in hosts]
        if list(o.allow_hosts) != patterns:
            o.allow_hosts = patterns

    async def running(self) -> None:
        o = ctx.options
        self.relay = Relay(self.timeouts)
        await self.relay.start()
        self.session = new_session(self.timeouts)
        if o.routecar_traces != "off":
            path = o.routecar_traces or str(default_traces_path(os.environ))
            retention = {"max_age_s": self.traces_max_age, "max_rows": o.routecar_traces_max_rows or None}
            # "process": rows are built and written in a child process, off this event loop's GIL.
            writer_cls = ProcessTraceWriter if o.routecar_traces_writer == "process" else TraceWriter
            self.writer = writer_cls(path, **retention).start()
        log.info("routecar: routing with catalog %s (%d entries), traces %s",
                 self.engine.catalog.version if self.engine else "?",
                 len(self.engine.catalog.entries) if self.engine else 0,
                 self.writer.store_path if self.writer else "off")
        log_how_to_use(ctx.master.addons.get("proxyserver"), ctx.options.mode, ctx.options.confdir)
        self.telemetry.running(self.engine)

    async def done(self) -> None:
        # Drain first (drain.py): every call gets its answer and its trace; the writer closes last.
        await self.drain.drain(self.relay)
        if self.relay is not None:
            await self.relay.stop()
        if self.session is not None:
            await self.session.close()
        close_lookup(self.engine.tenants if self.engine else None, None)
        if self.writer is not None:
            self.writer.close(timeout=10)
        self.telemetry.close()   # flushes the spans of the calls the drain let finish

    # -- hooks --------------------------------------------------------------------------
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Passthrough is decided here, before the body: the request is then streamed to the
        provider, so its body is never held in the flow (saved flows, mitmweb)."""
        self.drain.started(flow.id)   # in flight until its response or error (a drain waits for it)
        if flow.response or flow.error or not flow.live or self.engine is None:
            return
        headers = decoded_headers(flow.request)
        if classify(self.governance, flow, headers).kind is not Kind.PASSTHROUGH:
            return
        state = Routed(new_trace_id(), time.monotonic(), mode_of(flow), Kind.PASSTHROUGH, headers=headers)
        try:
            if has_routing_header(headers):
                check_routing_headers(flow.request.headers.fields)
            # Headers only: body_user cannot identify a passthrough call (its body is streamed).
            state.resolved = await self.engine.resolve_async(headers, {}, proxy_user(flow),
                                                             client_api_keys(header_pairs(flow.request)))
            if state.resolved is not None and self.drain.draining:
                raise ShuttingDown("routecar is shutting down and accepts no new calls: retry on a new connection")
        except RoutecarError as e:
            self._respond_error(flow, state, e)
            return
        except Exception as e:  # noqa: BLE001 - a bug must never forward the app's request as is
            log.exception("routecar: internal error while classifying a passthrough call")
            self._respond_error(flow, state, RoutecarError(f"routecar internal error: {type(e).__name__}"))
            return
        if state.resolved is None:
            self.passed += 1
            return  # ungoverned: untouched
        flow.metadata[META] = state
        for name in ROUTING_HEADERS:  # never to a provider, also not on passthrough
            flow.request.headers.pop(name, None)
        flow.request.stream = True
        flow.comment = f"routecar {state.trace_id} passthrough tenant={state.resolved.tenant or '-'}"

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or self.engine is None or META in flow.metadata:
            return
        try:
            await self._route(flow)
        except Exception as e:  # noqa: BLE001 - a bug must never forward the app's request as is
            log.exception("routecar: internal error while routing")
            state = flow.metadata.get(META) or Routed(new_trace_id(), time.monotonic(), "?")
            self._respond_error(flow, state, RoutecarError(f"routecar internal error: {type(e).__name__}"))

    async def _route(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        headers = decoded_headers(req)
        verdict = classify(self.governance, flow, headers)
        if verdict.kind is Kind.DRY_RUN:
            if not self.telemetry.answer_metrics(flow, headers):
                await self._dry_run(flow, headers)
            return
        if verdict.kind in (Kind.OUTSIDE, Kind.PASSTHROUGH):
            return  # passthrough: decided in requestheaders (governed or not)
        api, fmt = caller_shape(verdict)
        state = Routed(new_trace_id(), time.monotonic(), mode_of(flow), verdict.kind, fmt, headers=headers,
                       api_in=api)
        engine = self.engine
        assert engine is not None  # request() returns early until configure built it
        try:
            if has_routing_header(headers):  # governed by its presence: a bad one is a 400
                check_routing_headers(req.headers.fields)
            raw = None
            if verdict.kind is Kind.ROUTE:
                raw = request_bytes(req, engine.max_body)
                body = parse_body(raw, engine.max_body)
            else:  # read only to find a body `user`: never decoded (an upload is no JSON anyway)
                body = identity_body(req.raw_content) if "body_user" in engine.identify_order else {}
            model = body.get("model")
            state.requested_model = model if isinstance(model, str) else None
            state.resolved = await engine.resolve_async(headers, body, proxy_user(flow),
                                                        client_api_keys(header_pairs(req)))
            if state.resolved is None:
                self.passed += 1
                return  # no policy, no tenant, no default: untouched
            flow.metadata[META] = state
            if verdict.kind is Kind.ANSWER and verdict.api == "models":
                self._models(flow, state, engine)
                return
            if verdict.kind is not Kind.ROUTE:
                r = state.resolved
                raise verdict.refusal(tenant=r.tenant, fingerprint=r.policy.fingerprint)
            check_forwarded(headers)
            state.request_body = None if state.no_log else raw
            if self.drain.draining:
                raise ShuttingDown("routecar is shutting down and accepts no new calls: retry on a new connection")
            state.decision = engine.decide(state.resolved.policy, body, state.resolved.tenant, state.api_in)
        except RoutecarError as e:
            self._respond_error(flow, state, e)
            return
        finally:
            self._scrub_flow_request(flow, state)
        self.routed += 1
        assert self.session is not None and self.relay is not None
        state.result = result = await self.drain.run(try_plan(
            self.session, engine, state.decision, body, state.headers, timeouts=self.timeouts,
            shutdown=self.drain.cut, api_in=state.api_in))
        scrubber = self._key_scrubber()
        result.headers = scrubber.scrub_headers(result.headers)
        flow.comment = summary(state)  # what mitmweb shows for the flow
        if result.status >= 400:
            flow.marked = ":warning:"
        if result.stream is not None or state.no_log:
            # Streams (and every no_log answer) go through the relay: chunk by chunk, and
            # never held in the flow where a saved flow file or mitmweb would keep it.
            path = self.relay.register(result.status, result.headers, stream=result.stream,
                                       body=result.body, capture=not state.no_log,
                                       on_done=lambda stats: self._finish(state, stats), scrub=scrubber,
                                       reshape=Reshape(SHAPES[state.api_in], result.translator))
            close = http1.connection_close(req.http_version, req.headers)
            req.scheme, req.host, req.port, req.path = "http", "127.0.0.1", self.relay.port, path
            req.headers.clear()
            req.headers["host"] = f"127.0.0.1:{self.relay.port}"
            if close:   # mitmproxy reads the client's wish from this (same) request object
                req.headers["connection"] = "close"
            req.content = b""
            return
        result.body = scrubber.scrub(result.body)
        flow.response = make_response(result.status, result.body, result.headers + route_headers(state))
        self._finish(state, None)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = flow.metadata.get(META)
        if not isinstance(state, Routed) or flow.response is None:
            return
        if state.kind is Kind.PASSTHROUGH and state.result is None:
            # The request is out (streamed): now its credentials can leave the flow too.
            flow.response.stream = True   # and the answer is never held in it
            redact_headers(flow.request)
            flow.response.headers["x-route-trace-id"] = state.trace_id
            if state.resolved is not None:
                flow.response.headers["x-route-fingerprint"] = state.resolved.policy.fingerprint
            return
        headers = flow.response.headers
        if state.result is not None and flow.request.path.startswith(Relay.PREFIX):
            flow.response.stream = True
            for k, v in route_headers(state):
                headers[k] = v
            if flow.request.http_version == "HTTP/1.0":
                # An HTTP/1.0 client cannot read chunks: the body ends when the connection does.
                headers.pop("transfer-encoding", None)
        if state.result is not None and http1.connection_close(flow.request.http_version, flow.request.headers):
            headers["connection"] = "close"   # say so; mitmproxy closes after this response

    def response(self, flow: http.HTTPFlow) -> None:
        self.drain.ended(flow.id)
        state = flow.metadata.get(META)
        if isinstance(state, Routed) and state.kind is Kind.PASSTHROUGH and state.result is None:
            assert flow.response is not None
            self._passthrough_done(state, flow.response.status_code, "passthrough")

    def error(self, flow: http.HTTPFlow) -> None:
        self.drain.ended(flow.id)
        state = flow.metadata.get(META)
        if not isinstance(state, Routed):
            return
        if state.kind is Kind.PASSTHROUGH and state.result is None:
            redact_headers(flow.request)
            status = flow.response.status_code if flow.response is not None else None
            self._passthrough_done(state, status, "passthrough_error")
        elif state.result is not None and self.relay is not None:
            self.relay.discard(flow.request.path)   # never fetched: traced as client_gone

    # -- helpers ------------------------------------------------------------------------
    def _models(self, flow: http.HTTPFlow, state: Routed, engine: Engine) -> None:
        """`GET …/models` for a governed caller, answered and traced here (`models_answer`)."""
        raw = models_answer(engine, state, flow.request.pretty_host)
        state.result = Result(200, [("content-type", "application/json")], [], body=raw)
        flow.response = make_response(200, raw, [("content-type", "application/json"), *route_headers(state)])
        flow.comment = summary(state)
        self._finish(state, None)

    def _passthrough_done(self, state: Routed, status: int | None, outcome: str) -> None:
        self.passed += 1
        state.outcome = outcome
        state.result = Result(status or 502, [], [])
        self._finish(state, None)

    def _key_scrubber(self) -> KeyScrubber:
        """The operator's keys, as set now (the environment is read at request time too)."""
        assert self.engine is not None
        keys = self.engine.operator_keys()
        if keys != self._scrubber_keys:
            self._scrubber, self._scrubber_keys = KeyScrubber(keys), keys
        return self._scrubber
    def _scrub_flow_request(self, flow: http.HTTPFlow, state: Routed) -> None:
        """The app's credentials and routing headers stay out of the flow (saved flows, mitmweb)."""
        if META not in flow.metadata and state.resolved is None:
            return
        redact_headers(flow.request)
        if state.no_log:
            flow.request.headers.pop("content-encoding", None)   # the placeholder is not encoded
            flow.request.raw_content = b'{"routecar": "payload not kept (no_log)"}'

    def _respond_error(self, flow: http.HTTPFlow, state: Routed, err: RoutecarError) -> None:
        flow.metadata[META] = state
        body = error_body(err, state.error_format)
        if state.kind is Kind.PASSTHROUGH:  # refused in requestheaders: the request never leaves
            redact_headers(flow.request)
        state.result = Result(err.status, [("content-type", "application/json")], [], body=body, error=err)
        extra = [("connection", "close")] if self.drain.draining else []   # go elsewhere
        flow.response = make_response(err.status, body,
                                      [("content-type", "application/json"), *extra, *route_headers(state)])
        flow.comment = f"routecar {state.trace_id}: {err.code}"
        flow.marked = ":warning:"
        self.refused += 1
        self._finish(state, None)

    def _finish(self, state: Routed, stats: StreamStats | None) -> None:
        """Write the trace: once per governed request, after the client got its answer."""
        if state.result is None or state.traced:
            return
        state.traced = True
        res, d = state.result, state.decision
        ok = stream_health(stats) if stats is not None and res.stream_ms is not None else None
        if ok is not None and res.entry_id and self.engine is not None:
            # A stream's health is booked when it ends: a provider that cuts every stream after
            # its first event cools down (no fallback was possible once bytes reached the client).
            self.engine.health.record(res.entry_id, ok, res.stream_ms if ok else None)
        facts, cost = self.telemetry.finish(state, stats)   # metrics, span, access line
        if self.writer is None:
            return
        catalog = self._catalog_snapshot(d)
        queued = self.writer.submit(trace_record(state, stats, catalog, facts, cost))
        if not queued and catalog is not None and d is not None:  # dropped: send it again next time
            self._catalogs_traced.discard(d.catalog.version)

    def _catalog_snapshot(self, d: Decision | None) -> list[dict[str, Any]] | None:
        """The catalog's entries the first time a trace uses its version (`routecar explain` replays
        against it); None afterwards: the store keeps one copy per version."""
        if d is None or d.catalog.version in self._catalogs_traced:
            return None
        self._catalogs_traced.add(d.catalog.version)
        return d.catalog.to_list()

    async def _dry_run(self, flow: http.HTTPFlow, headers: dict[str, str]) -> None:
        assert self.engine is not None
        try:
            raw: bytes | None = request_bytes(flow.request, self.engine.max_body)
        except RoutecarError as e:
            flow.response = make_response(e.status, json.dumps(e.to_openai()).encode(),
                                          [("content-type", "application/json")])
            return
        status, body = await self.engine.dry_run_async(flow.request.method, flow.request.path, raw,
                                                       self._extra_health, headers)
        flow.response = http.Response.make(status, json.dumps(body, indent=2, default=str).encode(),
                                           {"content-type": "application/json"})

    def _extra_health(self) -> dict[str, Any]:
        return {"traces": self.writer.stats() if self.writer else None,
                "requests": {"routed": self.routed, "passed_through": self.passed, "refused": self.refused,
                             "in_flight": self.drain.in_flight, "draining": self.drain.draining}}
