"""The router's telemetry, on mitmproxy's side: options, start-up warnings, GET /metrics, and
pricing + observing each finished call (metrics, span, access line). The work itself is
plain Python in `routecar.telemetry`.

Options:

    routecar_metrics               GET /metrics (Prometheus), default on
    routecar_metrics_tenant_label  a `tenant` label on per-call series, default off (cardinality)
    routecar_otlp_endpoint         OTLP/HTTP collector base URL; empty: OTEL_EXPORTER_OTLP_ENDPOINT, else off
    routecar_access_log            one line per governed call, default on (`routecar run --quiet`: off)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from mitmproxy import http

from ..engine import Engine
from ..governance import METRICS_PATH
from ..metrics import SidecarState
from ..pricing import Cost
from ..providers import missing_keys
from ..relay import StreamStats
from ..otelenv import protocol_warning
from ..telemetry import Telemetry, TelemetryConfig, key_warning
from ..usage import ResponseFacts
from .state import Routed, answer_facts, answering_entry, call_outcome

log = logging.getLogger("routecar")

OPTIONS = ("routecar_metrics", "routecar_metrics_tenant_label", "routecar_otlp_endpoint", "routecar_access_log")


class RouterTelemetry:
    def __init__(self) -> None:
        self.current: Telemetry | None = None

    def load(self, loader: Any) -> None:
        loader.add_option("routecar_metrics", bool, True,
                          "Serve Prometheus metrics at GET /metrics (http://routecar.local/metrics through the "
                          "proxy, the sidecar's own address in reverse mode).")
        loader.add_option("routecar_metrics_tenant_label", bool, False,
                          "Add a `tenant` label to per-call metrics (one series per tenant: mind the cardinality).")
        loader.add_option("routecar_otlp_endpoint", str, "",
                          "OpenTelemetry collector base URL for OTLP/HTTP spans (e.g. http://otel-collector:4318). "
                          "Empty: OTEL_EXPORTER_OTLP_ENDPOINT if set, else no spans.")
        loader.add_option("routecar_access_log", bool, True,
                          "Log one line per governed call (trace id, tenant, policy, entry, status, attempts, ms, "
                          "cost).")

    def configure(self, updated: set[str], o: Any, state: Callable[[], SidecarState]) -> None:
        """Built once (its counters live as long as the sidecar), again only if its options change."""
        if self.current is not None and not updated & set(OPTIONS):
            return
        self.close()
        config = TelemetryConfig(metrics=o.routecar_metrics, metrics_tenant_label=o.routecar_metrics_tenant_label,
                                 otlp_endpoint=o.routecar_otlp_endpoint.strip(), access_log=o.routecar_access_log)
        self.current = Telemetry.build(config, os.environ, state=state)

    def running(self, engine: Engine | None) -> None:
        """Missing keys are loud: at start (and in /x/healthz and /metrics)."""
        if engine is not None:
            warning = key_warning(missing_keys(engine.providers, engine.catalog.providers(), os.environ))
            if warning:
                log.warning(warning)
        if self.current is not None and self.current.spans is not None:
            log.info("routecar: OTLP spans to %s", self.current.spans.endpoint)
            if warning := protocol_warning(os.environ):
                log.warning(warning)

    def answer_metrics(self, flow: http.HTTPFlow, headers: Mapping[str, str]) -> bool:
        """Answer `GET /metrics` (a dry-run address: routecar.local, or the sidecar in reverse mode)."""
        req = flow.request
        if self.current is None or req.method != "GET" or req.path != METRICS_PATH:
            return False
        status, body, content_type = self.current.metrics_exposition(headers.get("accept", ""))
        flow.response = http.Response.make(status, body, {"content-type": content_type})
        return True

    def finish(self, state: Routed, stats: StreamStats | None) -> tuple[ResponseFacts, Cost | None]:
        """Price the finished call and tell the observers; (facts, cost) go into its trace."""
        facts = answer_facts(state, stats)
        if self.current is None:
            return facts, None
        cost = self.current.cost(answering_entry(state), facts.usage)
        self.current.observe(call_outcome(state, stats, facts, cost))
        return facts, cost

    def close(self) -> None:
        if self.current is not None:
            self.current.close()   # flushes pending spans
