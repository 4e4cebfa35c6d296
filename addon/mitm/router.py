"""routecar's mitmproxy addon: the only place where flows meet the routing core.

`routecar run` loads `Router` into its lean master; stock mitmproxy loads it
through the script `addon/mitm/addon.py`:

    mitmdump -s addon/mitm/addon.py --set connection_strategy=lazy

An OpenAI-style `POST .../chat/completions` to a provider host (any host in
reverse mode) that carries a policy, or comes from a known tenant, is routed:
evaluated, tried against the ranked entries with the operator's keys, and
answered with `x-route-*` headers. Everything else passes through untouched.
`/x/...` dry-run endpoints are answered at `routecar.local` (regular mode) or at
the sidecar's own address (reverse mode).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from mitmproxy import ctx, exceptions, http
from mitmproxy.net.http import http1
from mitmproxy.proxy import mode_specs

from ..bodies import decode_request
from ..cabundle import env_command
from ..catalog import DEFAULT_CATALOG, load_catalog
from ..engine import Engine, Resolved, check_catalog_providers, parse_body
from ..errors import ConfigError, RoutecarError, ShuttingDown
from ..health import HealthTracker
from ..policy import Decision
from ..providers import DEFAULT_PROVIDERS, STRIP_HEADERS, load_providers
from ..reloading import ReloadingSource
from ..relay import Relay, StreamStats, stream_health
from ..tenants.identify import validate_order
from ..tenants.rules import load_rules
from ..tenants.lookup import TenantLookup, open_tenants
from ..traces.process import ProcessTraceWriter
from ..traces.record import TraceRecord
from ..traces.store import default_traces_path, parse_since
from ..traces.writer import TraceWriter
from ..upstream import Result, Timeouts, new_session, try_plan

from .drain import Drain

log = logging.getLogger("routecar")

LOCAL_HOST = "routecar.local"
DEFAULT_RULES = DEFAULT_PROVIDERS.parent / "rules.yaml"
META = "routecar"


@dataclass
class Routed:
    """What the addon knows about one routed request, kept in flow.metadata."""

    trace_id: str
    t0: float
    mode: str
    resolved: Resolved | None = None
    decision: Decision | None = None
    result: Result | None = None
    request_body: bytes | None = None
    requested_model: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    traced: bool = False

    @property
    def no_log(self) -> bool:
        # Until a policy says otherwise, keep nothing: an invalid policy may have meant no_log.
        return self.resolved is None or self.resolved.policy.no_log

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        # mitmproxy deep-copies flow.metadata to save a flow (--save, mitmweb backups) and then
        # serialises it as tnetstring: a copy keeps only the trace id and fingerprint, never the
        # request body or the app's headers (its credentials), and stays serialisable.
        return {"trace_id": self.trace_id,
                "fingerprint": self.resolved.policy.fingerprint if self.resolved else None}


def make_response(status: int, body: bytes, headers: list[tuple[str, str]]) -> http.Response:
    return http.Response.make(status, body, http.Headers([(k.encode(), v.encode()) for k, v in headers]))


def request_bytes(req: http.Request, max_body: int) -> bytes:
    # Never mitmproxy's get_content(): it decodes without a bound.
    return decode_request(req.raw_content, req.headers.get_all("content-encoding"), max_body)


def new_trace_id() -> str:
    return f"rt_{int(time.time() * 1000):x}{secrets.token_hex(4)}"


def _seconds(option: str, value: str, *, zero: bool = False) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{option} must be a number of seconds, got {value!r}") from None
    if not (0 <= seconds if zero else 0 < seconds) or seconds == float("inf"):
        raise ConfigError(f"{option} must be a {'non-negative' if zero else 'positive'} number of seconds, "
                          f"got {value!r}")
    return seconds


def _close_lookup(tenants: object, engine: Engine | None) -> None:
    """Close a tenant database's pool unless `engine` (the one in service) still uses it."""
    if isinstance(tenants, TenantLookup) and (engine is None or engine.tenants is not tenants):
        tenants.close()


def _is_reverse(flow: http.HTTPFlow) -> bool:
    return isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode)


class Router:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.writer: TraceWriter | ProcessTraceWriter | None = None
        self.traces_max_age: float | None = None
        self.relay: Relay | None = None
        self.session: aiohttp.ClientSession | None = None
        self.timeouts = Timeouts()
        self.drain = Drain()
        self.routed = self.passed = 0
        self._catalogs_traced: set[str] = set()  # versions whose snapshot went to the store

    # -- configuration ----------------------------------------------------------------
    def load(self, loader: Any) -> None:
        loader.add_option("routecar_catalog", str, str(DEFAULT_CATALOG),
                          "Catalog file (YAML/JSON) or http(s) URL; reloaded when it changes.")
        loader.add_option("routecar_providers", str, str(DEFAULT_PROVIDERS),
                          "providers.yaml: base URL, auth style and key variable per provider.")
        loader.add_option("routecar_tenants", str, "",
                          "Tenant table: tenants.yaml, a .csv file or sqlite:///file.db?table=tenants "
                          "(held in memory), or looked up on demand: postgresql://USER@HOST:PORT/DB?table=tenants "
                          "or sqlite:///file.db?table=tenants&mode=lookup. Empty: tenants are not used.")
        loader.add_option("routecar_tenant_ttl", str, "",
                          "Seconds a tenant looked up in a database stays cached (a change is in effect "
                          "within it; default 30), or between checks of a tenant file (default 2).")
        loader.add_option("routecar_tenant_grace", str, "300",
                          "Seconds a cached tenant is still served past its ttl while the tenant database "
                          "is down (0: none). Other tenants get 503 tenant_source_unavailable meanwhile.")
        loader.add_option("routecar_rules", str, str(DEFAULT_RULES),
                          "rules.yaml compiling tenant attributes into policy clauses.")
        loader.add_option("routecar_identify", str, "header,api_key,proxy_auth",
                          "Tenant identification methods, in order (also: body_user, the body's `user` field).")
        loader.add_option("routecar_default_tenant", str, "",
                          "Tenant used when a request names none (or an unknown one).")
        loader.add_option("routecar_default_policy", str, "",
                          "policy_ir JSON (or @file) applied to LLM calls with no policy and no tenant.")
        loader.add_option("routecar_traces", str, "",
                          "Trace database path (default: $ROUTECAR_HOME/traces.db); 'off' disables traces.")
        loader.add_option("routecar_traces_max_age", str, "",
                          "Prune traces older than this (e.g. 7d, 12h). Empty: keep.")
        loader.add_option("routecar_traces_max_rows", int, 0,
                          "Keep at most this many traces (0: no limit).")
        loader.add_option("routecar_traces_writer", str, "thread",
                          "Where trace rows are built and written: 'thread' (a thread of the proxy) or "
                          "'process' (a child process: same CPU in total, ~75 MB more memory, but the "
                          "proxy's event loop keeps its core when a second one is free).")
        # Seconds as strings: mitmproxy's --set cannot parse float options.
        loader.add_option("routecar_connect_timeout", str, "5", "Seconds to connect to a provider.")
        loader.add_option("routecar_first_byte_timeout", str, "60",
                          "Seconds from a ready connection to a provider's response headers "
                          "(for a stream: its first event). Keep it generous: a non-streaming "
                          "answer's headers come only once the whole answer is generated.")
        loader.add_option("routecar_deadline", str, "120",
                          "Seconds for all attempts of one request together.")
        loader.add_option("routecar_max_body", int, 8 * 1024 * 1024,
                          "Largest request body routed (bytes), also once its Content-Encoding is undone.")
        loader.add_option("routecar_drain_timeout", str, "30",
                          "Seconds in-flight calls may take to finish on shutdown (SIGTERM); calls still "
                          "running then end with 503 / an SSE error event 'shutting_down'. 0: end them at once.")
        loader.add_option("routecar_intercept_only_providers", bool, True,
                          "In regular mode, decrypt TLS only for provider hosts (sets allow_hosts).")

    def configure(self, updated: set[str]) -> None:
        if not any(k.startswith("routecar_") for k in updated) and self.engine is not None:
            if "mode" in updated:
                self._set_allow_hosts()
            return
        o = ctx.options
        previous, tenants = self.engine, None
        try:
            providers = load_providers(o.routecar_providers)
            # background=True: checks and reloads run in a thread, never in a hook.
            catalog_src = ReloadingSource(
                o.routecar_catalog, lambda s: check_catalog_providers(load_catalog(s), providers), time.monotonic,
                background=True)
            rules = None
            if o.routecar_tenants:
                tenants = open_tenants(
                    o.routecar_tenants, clock=time.monotonic, background=True,
                    ttl_s=_seconds("routecar_tenant_ttl", o.routecar_tenant_ttl) if o.routecar_tenant_ttl else None,
                    grace_s=_seconds("routecar_tenant_grace", o.routecar_tenant_grace, zero=True))
                rules = load_rules(o.routecar_rules)
            default_policy = o.routecar_default_policy
            if default_policy.startswith("@"):
                with open(default_policy[1:], encoding="utf-8") as f:
                    default_policy = f.read()
            self.engine = Engine(
                catalog_src, providers, os.environ, HealthTracker(time.monotonic),
                tenants=tenants, rules=rules,
                identify_order=validate_order([m.strip() for m in o.routecar_identify.split(",") if m.strip()]),
                default_policy=default_policy or None, default_tenant=o.routecar_default_tenant or None,
                max_body=o.routecar_max_body,
            )
            first_byte = _seconds("routecar_first_byte_timeout", o.routecar_first_byte_timeout)
            self.timeouts = Timeouts(_seconds("routecar_connect_timeout", o.routecar_connect_timeout),
                                     first_byte, max(first_byte, 120.0),
                                     _seconds("routecar_deadline", o.routecar_deadline))
            self.drain.timeout_s = _seconds("routecar_drain_timeout", o.routecar_drain_timeout, zero=True)
            if o.routecar_traces_writer not in ("process", "thread"):
                raise ConfigError(f"routecar_traces_writer must be 'process' or 'thread', "
                                  f"got {o.routecar_traces_writer!r}")
            try:
                self.traces_max_age = (parse_since(o.routecar_traces_max_age)
                                       if o.routecar_traces_max_age else None)
            except ValueError as e:
                raise ConfigError(f"routecar_traces_max_age: {e}") from None
        except (RoutecarError, OSError) as e:
            _close_lookup(tenants, previous)
            raise exceptions.OptionsError(f"routecar: {getattr(e, 'message', None) or e}") from e
        _close_lookup(previous.tenants if previous else None, self.engine)
        self._set_allow_hosts()

    def _set_allow_hosts(self) -> None:
        """Decrypt only provider hosts: other HTTPS is tunnelled and never sees our CA."""
        o = ctx.options
        if not (self.engine and o.routecar_intercept_only_providers) or o.ignore_hosts:
            return
        if any(not m.startswith("regular") for m in o.mode):
            return  # reverse/other modes: the target itself must stay intercepted
        hosts = sorted(self.engine.providers.intercept_hosts | {LOCAL_HOST})
        patterns = [rf"^{re.escape(h)}:\d+$" for h in hosts]
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
        self._log_how_to_use()

    def _log_how_to_use(self) -> None:
        """Where the app should point, with the port actually bound (also for port 0)."""
        server = ctx.master.addons.get("proxyserver")
        addrs = server.listen_addrs() if server is not None else []
        if not addrs:
            return
        host, port = addrs[0][0], addrs[0][1]
        host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        url = f"http://{host}:{port}"
        reverse = any(m.startswith("reverse") for m in ctx.options.mode)
        # The CA this proxy signs with: routecar run's, or stock mitmdump's own confdir.
        cmd = env_command(url, reverse=reverse, ca_dir=ctx.options.confdir, env=os.environ)
        if reverse:
            log.info('routecar: reverse mode: eval "$(%s)" in the app\'s shell (base URLs %s/v1 for openai, '
                     "%s for anthropic); dry-run: curl %s/x/fields", cmd, url, url, url)
        else:
            log.info('routecar: regular mode: eval "$(%s)" in the app\'s shell; '
                     "dry-run: curl -x %s http://routecar.local/x/fields", cmd, url)

    async def done(self) -> None:
        # Drain first (drain.py): every call gets its answer and its trace; the writer closes last.
        await self.drain.drain(self.relay)
        if self.relay is not None:
            await self.relay.stop()
        if self.session is not None:
            await self.session.close()
        _close_lookup(self.engine.tenants if self.engine else None, None)
        if self.writer is not None:
            self.writer.close(timeout=10)

    # -- hooks --------------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.drain.started(flow.id)   # in flight until its response or error (a drain waits for it)

    def response(self, flow: http.HTTPFlow) -> None:
        self.drain.ended(flow.id)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or self.engine is None:
            return
        try:
            await self._route(flow)
        except Exception as e:  # noqa: BLE001 - a bug must never forward the app's request as is
            log.exception("routecar: internal error while routing")
            state = flow.metadata.get(META) or Routed(new_trace_id(), time.monotonic(), "?")
            self._respond_error(flow, state, RoutecarError(f"routecar internal error: {type(e).__name__}"))

    async def _route(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        reverse = _is_reverse(flow)
        if req.pretty_host == LOCAL_HOST or (reverse and req.path.startswith("/x/")):
            await self._dry_run(flow)
            return
        if not self._is_llm_call(flow, reverse):
            return
        state = Routed(new_trace_id(), time.monotonic(), "reverse" if reverse else "regular")
        # mitmproxy keeps header case: compare and strip by lower-case name.
        # (Read the raw fields: Headers.items() looks every name up again, O(n²).)
        state.headers = {k.decode("utf-8", "surrogateescape").lower(): v.decode("utf-8", "surrogateescape")
                         for k, v in req.headers.fields}
        engine = self.engine
        assert engine is not None  # request() returns early until configure built it
        try:
            raw = request_bytes(req, engine.max_body)
            body = parse_body(raw, engine.max_body)
            model = body.get("model")
            state.requested_model = model if isinstance(model, str) else None
            proxy_user = (flow.metadata.get("proxyauth") or (None,))[0]
            state.resolved = await engine.resolve_async(state.headers, body, proxy_user)
            if state.resolved is None:
                self.passed += 1
                return  # no policy, no tenant, no default: untouched
            flow.metadata[META] = state
            state.request_body = None if state.no_log else raw
            if self.drain.draining:
                raise ShuttingDown("routecar is shutting down and accepts no new calls: retry on a new connection")
            state.decision = engine.decide(state.resolved.policy, body, state.resolved.tenant)
        except RoutecarError as e:
            self._respond_error(flow, state, e)
            return
        finally:
            self._scrub_flow_request(flow, state)
        self.routed += 1
        assert self.session is not None and self.relay is not None
        state.result = result = await self.drain.run(try_plan(
            self.session, engine, state.decision, body, state.headers, timeouts=self.timeouts,
            shutdown=self.drain.cut))
        flow.comment = self._summary(state)  # what mitmweb shows for the flow
        if result.status >= 400:
            flow.marked = ":warning:"
        if result.stream is not None or state.no_log:
            # Streams (and every no_log answer) go through the relay: chunk by chunk, and
            # never held in the flow where a saved flow file or mitmweb would keep it.
            path = self.relay.register(result.status, result.headers, stream=result.stream,
                                       body=result.body, capture=not state.no_log,
                                       on_done=lambda stats: self._finish(state, stats))
            close = http1.connection_close(req.http_version, req.headers)
            req.scheme, req.host, req.port, req.path = "http", "127.0.0.1", self.relay.port, path
            req.headers.clear()
            req.headers["host"] = f"127.0.0.1:{self.relay.port}"
            if close:   # mitmproxy reads the client's wish from this (same) request object
                req.headers["connection"] = "close"
            req.content = b""
            return
        flow.response = make_response(result.status, result.body, result.headers + self._route_headers(state))
        self._finish(state, None)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = flow.metadata.get(META)
        if not isinstance(state, Routed) or state.result is None or flow.response is None:
            return
        headers = flow.response.headers
        if flow.request.path.startswith(Relay.PREFIX):
            flow.response.stream = True
            for k, v in self._route_headers(state):
                headers[k] = v
            if flow.request.http_version == "HTTP/1.0":
                # An HTTP/1.0 client cannot read chunks: the body ends when the connection does.
                headers.pop("transfer-encoding", None)
        if http1.connection_close(flow.request.http_version, flow.request.headers):
            headers["connection"] = "close"   # say so; mitmproxy closes after this response

    def error(self, flow: http.HTTPFlow) -> None:
        state = flow.metadata.get(META)
        if isinstance(state, Routed) and state.result is not None and self.relay is not None:
            self.relay.discard(flow.request.path)   # never fetched: traced as client_gone
        self.drain.ended(flow.id)

    # -- helpers ------------------------------------------------------------------------
    def _is_llm_call(self, flow: http.HTTPFlow, reverse: bool) -> bool:
        req = flow.request
        if req.method != "POST" or not req.path.split("?", 1)[0].endswith("/chat/completions"):
            return False
        assert self.engine is not None
        return reverse or self.engine.providers.is_provider_host(req.pretty_host)

    def _route_headers(self, state: Routed) -> list[tuple[str, str]]:
        out = [("x-route-trace-id", state.trace_id)]
        if state.resolved is not None:
            out.append(("x-route-fingerprint", state.resolved.policy.fingerprint))
        res = state.result
        if res is not None:
            out.append(("x-route-attempts", str(len(res.attempts))))
            if res.entry_id and state.decision is not None:
                entry = state.decision.catalog.get(res.entry_id)
                if entry is not None:
                    out += [("x-route-model", entry.model), ("x-route-provider", entry.provider)]
        return out

    def _summary(self, state: Routed) -> str:
        r, d, res = state.resolved, state.decision, state.result
        parts = [f"routecar {state.trace_id}"]
        if r is not None:
            parts.append(f"tenant={r.tenant or '-'} policy={r.policy.fingerprint}")
        if res is not None:
            parts.append(f"-> {res.entry_id or 'none'} status={res.status} attempts={len(res.attempts)}")
        elif d is not None and d.selected:
            parts.append(f"selected={d.selected.entry.id}")
        return " ".join(parts)

    def _scrub_flow_request(self, flow: http.HTTPFlow, state: Routed) -> None:
        """The app's credentials and routing headers stay out of the flow (saved flows, mitmweb)."""
        if META not in flow.metadata and state.resolved is None:
            return
        fields = flow.request.headers.fields
        if any(k.decode("latin-1").lower() in STRIP_HEADERS for k, _ in fields):
            flow.request.headers.fields = tuple(
                (k, b"[redacted]") if k.decode("latin-1").lower() in STRIP_HEADERS else (k, v) for k, v in fields)
        if state.no_log:
            flow.request.headers.pop("content-encoding", None)   # the placeholder is not encoded
            flow.request.raw_content = b'{"routecar": "payload not kept (no_log)"}'

    def _respond_error(self, flow: http.HTTPFlow, state: Routed, err: RoutecarError) -> None:
        flow.metadata[META] = state
        body = json.dumps(err.to_openai()).encode()
        state.result = Result(err.status, [("content-type", "application/json")], [], body=body, error=err)
        extra = [("connection", "close")] if self.drain.draining else []   # go elsewhere
        flow.response = make_response(err.status, body,
                                      [("content-type", "application/json"), *extra, *self._route_headers(state)])
        flow.comment = f"routecar {state.trace_id}: {err.code}"
        flow.marked = ":warning:"
        self._finish(state, None)

    def _finish(self, state: Routed, stats: StreamStats | None) -> None:
        """Write the trace: once per routed request, after the client got its answer."""
        if state.result is None or state.traced:
            return
        state.traced = True
        res, d, r = state.result, state.decision, state.resolved
        ok = stream_health(stats) if stats is not None and res.stream_ms is not None else None
        if ok is not None and res.entry_id and self.engine is not None:
            # A stream's health is booked when it ends: a provider that cuts every stream after
            # its first event cools down (no fallback was possible once bytes reached the client).
            self.engine.health.record(res.entry_id, ok, res.stream_ms if ok else None)
        if self.writer is None:
            return
        if res.error is not None:
            outcome = res.error.code
        elif stats is not None and stats.interrupted:
            outcome = "shutting_down"
        elif stats is not None and stats.error:
            outcome = "stream_broken"
        elif stats is not None and stats.client_gone:
            outcome = "client_gone"
        else:
            outcome = "ok" if res.status < 400 else "provider_error"
        response_body: bytes | None = None
        if not state.no_log:
            response_body = bytes(stats.captured) if stats is not None and stats.captured is not None else res.body
        usage = _usage(bytes(stats.tail) if stats is not None else res.body)
        catalog = self._catalog_snapshot(d)
        queued = self.writer.submit(TraceRecord(
            trace_id=state.trace_id, ts=time.time(), tenant=r.tenant if r else getattr(res.error, "tenant", None), mode=state.mode,
            no_log=state.no_log, stream=bool(d and d.request.stream), status=res.status, outcome=outcome,
            latency_ms=round((time.monotonic() - state.t0) * 1000, 2), ttfb_ms=res.ttfb_ms, usage=usage,
            decision=d, attempts=res.attempts,  # to_dict() runs in the writer thread
            request_body=state.request_body, response_body=response_body,
            error=res.error.to_openai() if res.error is not None else None,
            fingerprint=r.policy.fingerprint if r else None, digest=r.policy.digest if r else None,
            requested_model=state.requested_model, catalog=catalog))
        if not queued and catalog is not None and d is not None:  # dropped: send it again next time
            self._catalogs_traced.discard(d.catalog.version)

    def _catalog_snapshot(self, d: Decision | None) -> list[dict[str, Any]] | None:
        """The catalog's entries the first time a trace uses its version (`routecar explain` replays
        against it); None afterwards: the store keeps one copy per version."""
        if d is None or d.catalog.version in self._catalogs_traced:
            return None
        self._catalogs_traced.add(d.catalog.version)
        return d.catalog.to_list()

    async def _dry_run(self, flow: http.HTTPFlow) -> None:
        assert self.engine is not None
        try:
            raw: bytes | None = request_bytes(flow.request, self.engine.max_body)
        except RoutecarError as e:
            flow.response = http.Response.make(e.status, json.dumps(e.to_openai()).encode(),
                                               {"content-type": "application/json"})
            return
        status, body = await self.engine.dry_run_async(flow.request.method, flow.request.path, raw,
                                                       self._extra_health)
        flow.response = http.Response.make(status, json.dumps(body, indent=2, default=str).encode(),
                                           {"content-type": "application/json"})

    def _extra_health(self) -> dict[str, Any]:
        return {"traces": self.writer.stats() if self.writer else None,
                "requests": {"routed": self.routed, "passed_through": self.passed,
                             "in_flight": self.drain.in_flight, "draining": self.drain.draining}}


_USAGE = re.compile(rb'"usage"\s*:\s*(\{[^{}]*\})')


def _usage(blob: bytes | None) -> dict[str, Any] | None:
    """The last `usage` object of a response or an SSE stream's tail."""
    if not blob:
        return None
    found = _USAGE.findall(blob)
    if not found:
        return None
    try:
        usage = json.loads(found[-1])
    except ValueError:
        return None
    return usage if isinstance(usage, dict) else None

