"""OpenTelemetry: one trace per request across processes. Setup from the standard OTEL_* variables, the W3C trace
context (`traceparent` and `tracestate`) carried through a job, and the OTLP exporters for spans and metrics.

Tracing is on when an OTLP endpoint is configured (OTEL_EXPORTER_OTLP_ENDPOINT or ..._TRACES_ENDPOINT) and
OTEL_SDK_DISABLED is not true; otherwise every helper here returns None and callers skip span work entirely.
OTLP metrics are exported the same way (OTEL_EXPORTER_OTLP_ENDPOINT or ..._METRICS_ENDPOINT, unless
OTEL_METRICS_EXPORTER=none). Each signal's protocol is OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL, else
OTEL_EXPORTER_OTLP_PROTOCOL: `grpc` or `http/protobuf` (the default, as the SDK's).
No prompt or completion text is ever put on a span.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter

_PROPAGATOR = TraceContextTextMapPropagator()
_GETTER: DefaultGetter = DefaultGetter()
PROTOCOLS = ("grpc", "http/protobuf")


def _env(env: dict[str, str] | None) -> dict[str, str]:
    return dict(os.environ) if env is None else env


def _signal_on(signal: str, env: dict[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or env.get(f"OTEL_{signal}_EXPORTER", "") == "none":
        return False
    return bool(env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def enabled(env: dict[str, str] | None = None) -> bool:
    return _signal_on("TRACES", _env(env))


def metrics_enabled(env: dict[str, str] | None = None) -> bool:
    return _signal_on("METRICS", _env(env))


def protocol(signal: str, env: dict[str, str] | None = None) -> str:
    """`grpc` or `http/protobuf` for TRACES or METRICS; an unknown value is refused rather than guessed at."""
    env = _env(env)
    value = env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or PROTOCOLS[1]
    if value not in PROTOCOLS:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL {value!r} is not one of {', '.join(PROTOCOLS)}")
    return value


def resource(component: str) -> Resource:
    return Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "herd"), "herd.component": component})


def _span_exporter() -> SpanExporter:
    # Endpoint, headers, timeouts and TLS come from OTEL_* (the exporters read them); only the protocol is ours.
    if protocol("TRACES") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

        return GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def metric_exporter() -> MetricExporter | None:
    """An OTLP metric exporter (cumulative temporality, as Prometheus reads it), or None when metrics export is off."""
    if not metrics_enabled():
        return None
    if protocol("METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter

        return GrpcMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter()


def setup(component: str) -> TracerProvider | None:
    """A provider exporting over OTLP (gRPC or HTTP, from OTEL_*), or None when tracing is off."""
    if not enabled():
        return None
    provider = TracerProvider(resource=resource(component))
    provider.add_span_processor(BatchSpanProcessor(_span_exporter()))
    return provider


def tracer(provider: TracerProvider | None, name: str) -> Tracer | None:
    return provider.get_tracer(name) if provider is not None else None


def trace_fields(span: Span) -> dict[str, str | None]:
    """`traceparent` and `tracestate` of `span`, as the fields of an internal request that carry them to a worker."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=set_span_in_context(span))
    return {"traceparent": carrier.get("traceparent"), "tracestate": carrier.get("tracestate") or None}


def traceparent_of(span: Span) -> str | None:
    return trace_fields(span)["traceparent"]


def context_from(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    """The remote parent a job carries (or a client sent), with its vendors' `tracestate`; None when there is none."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return _PROPAGATOR.extract(carrier, getter=_GETTER)
