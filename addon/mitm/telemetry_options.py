"""routecar's telemetry options (issue 13): registered next to the routing options.

    routecar_metrics               GET /metrics (Prometheus), default on
    routecar_metrics_tenant_label  a `tenant` label on per-call series, default off (cardinality)
    routecar_otlp_endpoint         OTLP/HTTP collector base URL; empty: OTEL_EXPORTER_OTLP_ENDPOINT, else off
    routecar_access_log            one line per governed call, default on (`routecar run --quiet`: off)
"""

from __future__ import annotations

from typing import Any

from ..telemetry import TelemetryConfig

OPTIONS = ("routecar_metrics", "routecar_metrics_tenant_label", "routecar_otlp_endpoint", "routecar_access_log")


def add_telemetry_options(loader: Any) -> None:
    loader.add_option("routecar_metrics", bool, True,
                      "Serve Prometheus metrics at GET /metrics (http://routecar.local/metrics through the "
                      "proxy, the sidecar's own address in reverse mode).")
    loader.add_option("routecar_metrics_tenant_label", bool, False,
                      "Add a `tenant` label to per-call metrics (one series per tenant: mind the cardinality).")
    loader.add_option("routecar_otlp_endpoint", str, "",
                      "OpenTelemetry collector base URL for OTLP/HTTP spans (e.g. http://otel-collector:4318). "
                      "Empty: OTEL_EXPORTER_OTLP_ENDPOINT if set, else no spans.")
    loader.add_option("routecar_access_log", bool, True,
                      "Log one line per governed call (trace id, tenant, policy, entry, status, attempts, ms, cost).")


def telemetry_config(o: Any) -> TelemetryConfig:
    return TelemetryConfig(metrics=o.routecar_metrics, metrics_tenant_label=o.routecar_metrics_tenant_label,
                           otlp_endpoint=o.routecar_otlp_endpoint.strip(), access_log=o.routecar_access_log)
