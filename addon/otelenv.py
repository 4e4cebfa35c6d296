"""Where OTLP spans go and how, read from options and the standard OTEL_* variables
without importing the OpenTelemetry SDK (it costs ~0.15 s to import; a sidecar without
spans never loads it: `telemetry` imports `spans` only when an endpoint is set).

    otlp_endpoint(option, env) -> URL | None   where spans go (None: spans off)
    export_timeout(env) -> seconds             one export's time budget, retries included
    protocol_warning(env) -> str | None        routecar speaks OTLP/HTTP protobuf only
    TRACE_HEADERS                              the W3C trace-context headers a call may carry
"""

from __future__ import annotations

from collections.abc import Mapping

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
TIMEOUT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
DEFAULT_EXPORT_TIMEOUT_S = 5.0
TRACE_HEADERS = ("traceparent", "tracestate")


def otlp_endpoint(option: str, env: Mapping[str, str]) -> str | None:
    """The OTLP/HTTP traces URL: the option (a collector base URL, like the standard
    variable), else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as is, else
    OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces. None when none is set or OTEL_SDK_DISABLED."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" and not option:
        return None
    if option:
        base = option.strip()
        return base if base.rstrip("/").endswith("/v1/traces") else base.rstrip("/") + "/v1/traces"
    if env.get(TRACES_ENDPOINT_ENV):
        return env[TRACES_ENDPOINT_ENV].strip()
    if env.get(ENDPOINT_ENV):
        return env[ENDPOINT_ENV].strip().rstrip("/") + "/v1/traces"
    return None


def export_timeout(env: Mapping[str, str]) -> float:
    """OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, else OTEL_EXPORTER_OTLP_TIMEOUT, in seconds (as the
    OpenTelemetry Python SDK reads them); else 5 s. It bounds one export with its retries, so
    also how long a stop waits for a collector that cannot be reached. A value that is not a
    positive number is ignored."""
    for name in TIMEOUT_ENVS:
        try:
            value = float(env.get(name, "").strip())
        except ValueError:
            continue
        if value > 0:
            return value
    return DEFAULT_EXPORT_TIMEOUT_S


def protocol_warning(env: Mapping[str, str]) -> str | None:
    """routecar speaks OTLP/HTTP with protobuf only: say so when the environment asks for another."""
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "").strip()
    if protocol and protocol != "http/protobuf":
        return (f"routecar: OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported; spans are sent as "
                f"http/protobuf (point the endpoint at the collector's OTLP/HTTP port, usually 4318)")
    return None
