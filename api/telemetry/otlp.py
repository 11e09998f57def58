"""OTLP metrics export: every OTEL_METRIC_EXPORT_INTERVAL ms (default 60000) the same families /metrics shows go to
the OTLP exporter of shared/tracing.py (gRPC or HTTP), with cumulative temporality and the histograms' exemplars.

The families are herd's own (api/telemetry/metrics.py), so Prometheus and OTLP never disagree; only the naming differs
(OpenTelemetry names and units here, `gen_ai.server.request.duration` for `gen_ai_server_request_duration_seconds`).
Fleet families come from Redis and are the same on every replica, as on /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable

from herd.api.telemetry.metrics import Family, HistogramPoint, Labels, Metrics
from herd.inference import QueueStatus, WorkerStatus
from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

log = logging.getLogger("herd.api.telemetry.otlp")

Fleet = Callable[[], Awaitable[tuple[QueueStatus | None, list[WorkerStatus]]]]
INT_ATTRIBUTES = frozenset({"http.response.status_code", "server.port"})
_SCOPE = InstrumentationScope("herd.api")


def _attributes(labels: Labels) -> dict[str, str | int]:
    return {k: int(v) if k in INT_ATTRIBUTES and v.isdigit() else v for k, v in labels}


def _histogram_point(labels: Labels, point: HistogramPoint, start_ns: int, now_ns: int) -> HistogramDataPoint:
    exemplars = [
        Exemplar({}, e.value, int(e.at * 1e9), span_id=int(e.span_id, 16), trace_id=int(e.trace_id, 16))
        for _, e in sorted(point.exemplars.items())
    ]
    return HistogramDataPoint(
        attributes=_attributes(labels),
        start_time_unix_nano=start_ns,
        time_unix_nano=now_ns,
        count=point.count,
        sum=point.sum,
        bucket_counts=list(point.counts),
        explicit_bounds=[float(b) for b in point.bounds],
        min=point.min,  # type: ignore[arg-type]  # None (unknown: a worker's histogram) leaves the field unset
        max=point.max,  # type: ignore[arg-type]
        exemplars=exemplars,
    )


def metrics_data(families: list[Family], resource: Resource, start_ns: int) -> MetricsData:
    now_ns = time.time_ns()
    out: list[Metric] = []
    for family in families:
        data: Sum | Gauge | Histogram
        if family.kind == "histogram":
            hists = [(k, v) for k, v in family.points if isinstance(v, HistogramPoint)]
            points = [_histogram_point(k, v, start_ns, now_ns) for k, v in hists]
            data = Histogram(points, AggregationTemporality.CUMULATIVE)
        else:
            numbers = [
                NumberDataPoint(_attributes(k), start_ns, now_ns, v)
                for k, v in family.points
                if not isinstance(v, HistogramPoint)
            ]
            if family.kind == "counter":
                data = Sum(numbers, AggregationTemporality.CUMULATIVE, is_monotonic=True)
            else:
                data = Gauge(numbers)
        if data.data_points:
            out.append(Metric(family.otel_name, family.help, family.unit, data))
    return MetricsData([ResourceMetrics(resource, [ScopeMetrics(_SCOPE, out, "")], "")])


class OtlpMetrics:
    """Owns the periodic export task and the exporter; `close()` sends a last batch, then shuts the exporter down."""

    def __init__(self, exporter: MetricExporter, metrics: Metrics, fleet: Fleet, resource: Resource) -> None:
        self._exporter = exporter
        self._metrics = metrics
        self._fleet = fleet
        self._resource = resource
        self._interval_s = float(os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "60000")) / 1000
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="herd-otlp-metrics")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.export()

    async def export(self) -> None:
        try:
            queue, workers = await self._fleet()
        except Exception as exc:  # Redis away: this process's own families still go out
            log.warning("fleet metrics unavailable for OTLP export: %s", exc)
            queue, workers = None, []
        data = metrics_data(self._metrics.collect(queue, workers), self._resource, int(self._metrics.started_at * 1e9))
        result = await asyncio.to_thread(self._exporter.export, data)
        if result.name != "SUCCESS":
            log.warning("OTLP metrics export failed (%s)", result.name)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.export()
        await asyncio.to_thread(self._exporter.shutdown)
