"""Real OTLP receivers on 127.0.0.1 for the telemetry tests: OTLP/HTTP (protobuf bodies on /v1/traces and
/v1/metrics, as a collector takes them) and OTLP/gRPC (grpcio server in process, the collector's two services).
Both decode what arrives with the official protobuf types into plain dicts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import free_port

Record = dict[str, object]


def _value(v: object) -> object:
    kind = v.WhichOneof("value")  # type: ignore[attr-defined]
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]  # type: ignore[attr-defined]
    return getattr(v, kind) if kind else None


def _attributes(attributes: object) -> dict[str, object]:
    return {a.key: _value(a.value) for a in attributes}  # type: ignore[attr-defined]


class Collected:
    """Spans and metric points, as they arrived (metrics: every export adds points; the last one is the newest)."""

    def __init__(self) -> None:
        self.spans: list[Record] = []
        self.metrics: list[Record] = []
        self.lock = threading.Lock()

    def add_traces(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    record = {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": span.kind,  # 1 INTERNAL, 2 SERVER
                        "status": span.status.code,  # 0 UNSET, 1 OK, 2 ERROR
                        "trace_state": span.trace_state,
                        "component": resource.get("herd.component"),
                        "attributes": _attributes(span.attributes),
                    }
                    with self.lock:
                        self.spans.append(record)

    def add_metrics(self, request: ExportMetricsServiceRequest) -> None:
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    data = getattr(metric, kind)
                    for point in data.data_points:
                        record: Record = {
                            "name": metric.name,
                            "unit": metric.unit,
                            "kind": kind,
                            "attributes": _attributes(point.attributes),
                        }
                        if kind == "histogram":
                            record.update(
                                bounds=list(point.explicit_bounds),
                                counts=list(point.bucket_counts),
                                count=point.count,
                                exemplar_traces={e.trace_id.hex() for e in point.exemplars},
                            )
                        else:
                            record["value"] = point.as_double if point.HasField("as_double") else point.as_int
                        with self.lock:
                            self.metrics.append(record)

    def of_trace(self, trace_id: str) -> list[Record]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def wait_for(self, what: Callable[[], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline:
                raise AssertionError("the receiver did not get what was expected in time")
            time.sleep(0.1)

    def wait_for_spans(self, trace_id: str, names: set[str]) -> list[Record]:
        self.wait_for(lambda: names <= {s["name"] for s in self.of_trace(trace_id)})
        time.sleep(0.5)  # let stragglers of the same trace arrive
        return self.of_trace(trace_id)

    def latest_metrics(self, name: str) -> list[Record]:
        """The points of `name` from its newest export (cumulative: the newest has everything)."""
        with self.lock:
            points = [m for m in self.metrics if m["name"] == name]
        latest: dict[str, Record] = {}
        for point in points:
            latest[repr(sorted(point["attributes"].items()))] = point  # type: ignore[attr-defined]
        return list(latest.values())


@contextmanager
def http_receiver() -> Iterator[tuple[int, Collected]]:
    collected = Collected()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/v1/metrics":
                collected.add_metrics(ExportMetricsServiceRequest.FromString(body))
                reply = ExportMetricsServiceResponse().SerializeToString()
            else:
                collected.add_traces(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield port, collected
    finally:
        httpd.shutdown()
        httpd.server_close()


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collected: Collected) -> None:
        self.collected = collected

    def Export(self, request: ExportTraceServiceRequest, context: object) -> ExportTraceServiceResponse:
        self.collected.add_traces(request)
        return ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, collected: Collected) -> None:
        self.collected = collected

    def Export(self, request: ExportMetricsServiceRequest, context: object) -> ExportMetricsServiceResponse:
        self.collected.add_metrics(request)
        return ExportMetricsServiceResponse()


@contextmanager
def grpc_receiver() -> Iterator[tuple[int, Collected]]:
    collected = Collected()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(collected), server)  # type: ignore[no-untyped-call]
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(collected), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, collected
    finally:
        server.stop(grace=None)
