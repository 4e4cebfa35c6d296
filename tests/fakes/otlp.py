"""A real OTLP/HTTP receiver on 127.0.0.1 for tests and benchmarks: what a collector's
`otlp` receiver does for traces, minus the pipeline.

    with OtlpReceiver() as rx:              # listens on an ephemeral port
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.url}
        ...
        rx.wait_spans(2, timeout=10)        # decoded spans, polled with a deadline
        rx.bodies                           # every raw request body, for "is X anywhere?" checks

`POST /v1/traces` bodies (protobuf, optionally gzip) are decoded with
opentelemetry-proto's ExportTraceServiceRequest and answered like a collector
(200, an empty ExportTraceServiceResponse). `decode=False` only counts (benchmarks).
"""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                       ExportTraceServiceResponse)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(x) for x in v.array_value.values)
    return getattr(v, kind) if kind else None


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int
    attributes: dict[str, Any]
    resource: dict[str, Any]


class OtlpReceiver:
    def __init__(self, decode: bool = True) -> None:
        self.decode = decode
        self.spans: list[ReceivedSpan] = []
        self.bodies: list[bytes] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = self.path == "/v1/traces" and receiver._received(body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 400)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _received(self, body: bytes) -> bool:
        with self._lock:
            self.requests += 1
            if not self.decode:
                return True
            self.bodies.append(body)
        req = ExportTraceServiceRequest()
        try:
            req.ParseFromString(body)
        except Exception:  # noqa: BLE001 - a body that is not OTLP: answer 400
            return False
        spans = []
        for rs in req.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(ReceivedSpan(
                        s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.kind,
                        s.start_time_unix_nano, s.end_time_unix_nano, s.status.code,
                        {a.key: _value(a.value) for a in s.attributes}, resource))
        with self._lock:
            self.spans.extend(spans)
        return True

    def wait_spans(self, n: int, timeout: float = 15.0) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.spans) >= n:
                    return list(self.spans)
            time.sleep(0.02)
        raise AssertionError(f"expected {n} span(s) within {timeout}s, got {len(self.spans)}")

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
