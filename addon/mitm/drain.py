"""Graceful shutdown: stop accepting, let in-flight calls finish, end the rest visibly.

mitmproxy runs every addon's `done` hook on SIGTERM/SIGINT (`routecar run` and
stock `mitmdump -s` alike) while its event loop still serves open connections.
The Router's `done` awaits `Drain.drain()`:

    1. stop the listening servers: no new connection is accepted (a new request on
       an open keep-alive connection is refused by the Router: 503 shutting_down);
    2. wait until every flow the Router saw (routed or passed through) has its
       response or its error, up to `timeout_s` (routecar_drain_timeout);
    3. at the deadline, `cut` is set: calls still waiting for a provider are
       cancelled (try_plan answers 503 `shutting_down`, see upstream.py) and the
       relay ends running streams with an SSE `shutting_down` event; then wait a
       short grace for those answers to go out and be traced.

A second SIGTERM/SIGINT during the drain moves the deadline to now. Only after
`drain()` returns does the Router close the relay, the session and, last, the
trace writer, so every call that got an answer also has its trace row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from mitmproxy import ctx

from ..relay import Relay

log = logging.getLogger("routecar")

CUT_GRACE_S = 5.0   # after the cut: time for the cut calls to answer and be traced


class Drain:
    def __init__(self, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self.draining = False
        self.cut = asyncio.Event()           # the drain deadline has come
        self._flows: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._hurry = asyncio.Event()

    # -- bookkeeping, from the Router's hooks ---------------------------------------------
    def started(self, flow_id: str) -> None:
        self._flows.add(flow_id)
        self._idle.clear()

    def ended(self, flow_id: str) -> None:
        self._flows.discard(flow_id)
        if not self._flows:
            self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._flows)

    async def run[T](self, work: Coroutine[Any, Any, T]) -> T:
        """Await `work` in its own task, which the cut cancels (the task's own code decides
        what a cancellation under `cut` answers)."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        try:
            return await task
        finally:
            self._tasks.discard(task)

    # -- the shutdown ---------------------------------------------------------------------
    async def drain(self, relay: Relay | None) -> None:
        self.draining = True
        self._on_second_signal()   # first: once the listener is gone, a second SIGTERM must count
        await _stop_listening()
        if self._flows:
            log.info("routecar: draining %d call(s), up to %gs (a second SIGTERM ends the drain now)",
                     len(self._flows), self.timeout_s)
        if not await self._wait_idle(self.timeout_s, hurry=True):
            await self._cut(relay)
        await _close_connections()

    async def _cut(self, relay: Relay | None) -> None:
        log.warning("routecar: drain deadline: ending %d call(s) still running (503 / SSE shutting_down)",
                    len(self._flows))
        self.cut.set()
        for task in list(self._tasks):
            task.cancel()
        if relay is not None:
            relay.interrupt()
        if not await self._wait_idle(CUT_GRACE_S):
            log.warning("routecar: %d connection(s) still open after the drain; closing", len(self._flows))

    async def _wait_idle(self, timeout_s: float, *, hurry: bool = False) -> bool:
        """True once no flow is in flight; False at the timeout (or a second signal)."""
        idle = asyncio.ensure_future(self._idle.wait())
        waits = {idle, asyncio.ensure_future(self._hurry.wait())} if hurry else {idle}
        try:
            await asyncio.wait(waits, timeout=max(timeout_s, 0.0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return not self._flows

    def _on_second_signal(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Only the main thread's loop can take signals (mitmdump, routecar run); elsewhere
            # (tests, an embedding app) the deadline alone ends the drain.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._hurry.set)


async def _close_connections(timeout_s: float = 2.0) -> None:
    """End the clients' idle keep-alive connections the way mitmproxy ends a closed one, so
    they close cleanly (FIN) instead of being cancelled mid-await when the event loop stops."""
    server = ctx.master.addons.get("proxyserver") if ctx.master else None
    if server is None:
        return
    for handler in list(server.connections.values()):
        io = getattr(handler, "transports", {}).get(getattr(handler, "client", None))
        task = getattr(io, "handler", None)
        if task is not None:
            task.cancel()
    deadline = asyncio.get_running_loop().time() + timeout_s
    while server.connections and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)   # each handler logs its disconnect and unregisters


async def _stop_listening() -> None:
    """Close the proxy's listening sockets; open connections keep being served."""
    server = ctx.master.addons.get("proxyserver") if ctx.master else None
    if server is not None and len(server.servers):
        await server.servers.update([])
