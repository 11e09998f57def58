"""The API process's metrics: herd's own request counters and histograms, the OpenTelemetry GenAI and HTTP server
histograms (the conventions' names, buckets and attributes), and the fleet's gauges and engine measures read from
Redis (queues) and the workers' heartbeats at collection time.

`collect()` gives every family in one neutral shape; exposition.py renders it as Prometheus text or OpenMetrics
(with trace-id exemplars) and otlp.py as OTLP. Label keys are the OpenTelemetry attribute names
(`gen_ai.request.model`); Prometheus sees them with dots as underscores (`gen_ai_request_model`).

Fleet families (herd_queue_*, herd_model_workers, herd_worker_*) describe shared state, not this process: every API
replica reports the same values, so aggregate them across replicas with max (or pick one replica), never sum.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

from herd.inference import Buckets, QueueStatus, WorkerStatus

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# The conventions' ExplicitBucketBoundaries (semantic conventions, gen-ai-metrics.md and http-metrics.md).
GEN_AI_DURATION_S = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
GEN_AI_TTFT_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
GEN_AI_TPOT_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
HTTP_DURATION_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

Labels = tuple[tuple[str, str], ...]
Trace = tuple[str, str]  # an exemplar's trace id and span id, hex
Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True, slots=True)
class Exemplar:
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    value: float
    at: float  # time.time()


@dataclass(slots=True)
class HistogramPoint:
    bounds: tuple[float, ...]
    counts: list[int]  # per bucket (not cumulative), len(bounds) + 1: the last is (bounds[-1], +Inf)
    sum: float = 0.0
    count: int = 0
    min: float | None = None  # None: not kept (a worker's histogram from its heartbeat)
    max: float | None = None
    exemplars: dict[int, Exemplar] = field(default_factory=dict)  # bucket index -> the latest traced observation


@dataclass(frozen=True, slots=True)
class Family:
    """One metric: OpenTelemetry name and unit, Prometheus base name (no `_total`), and its points."""

    otel_name: str
    prom_name: str
    kind: Kind
    unit: str
    help: str
    points: list[tuple[Labels, float | HistogramPoint]]


class Histogram:
    def __init__(self, bounds: tuple[float, ...] = BUCKETS_S) -> None:
        self.bounds = bounds
        self.points: dict[Labels, HistogramPoint] = {}

    def observe(self, labels: Labels, value: float, exemplar: Trace | None = None) -> None:
        point = self.points.get(labels)
        if point is None:
            point = self.points[labels] = HistogramPoint(self.bounds, [0] * (len(self.bounds) + 1))
        index = bisect.bisect_left(self.bounds, value)
        point.counts[index] += 1
        point.sum += value
        point.count += 1
        point.min = value if point.min is None else min(point.min, value)
        point.max = value if point.max is None else max(point.max, value)
        if exemplar is not None:
            point.exemplars[index] = Exemplar(exemplar[0], exemplar[1], value, time.time())


def _from_buckets(buckets: Buckets) -> HistogramPoint:
    counts = list(buckets.counts) if len(buckets.counts) == len(buckets.bounds) + 1 else [0] * (len(buckets.bounds) + 1)
    return HistogramPoint(tuple(buckets.bounds), counts, buckets.sum, buckets.count)


class Metrics:
    """Held in app.state; the request telemetry (api/telemetry/genai.py) and the response hook record into it."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.responses: dict[Labels, int] = defaultdict(int)
        self.tokens: dict[Labels, int] = defaultdict(int)
        self.ttft = Histogram()
        self.e2e = Histogram()
        self.inter_token = Histogram()
        self.queue_wait = Histogram()
        self.rate_limited: dict[Labels, int] = defaultdict(int)
        self.dispatches: dict[Labels, int] = defaultdict(int)
        self.gen_ai_duration = Histogram(GEN_AI_DURATION_S)
        self.gen_ai_ttft = Histogram(GEN_AI_TTFT_S)
        self.gen_ai_tpot = Histogram(GEN_AI_TPOT_S)
        self.http_duration = Histogram(HTTP_DURATION_S)

    def observe_response(self, route: str, method: str, status: int, model: str) -> None:
        """`model` is the served model of an admitted request, else "" (never a client's unchecked string)."""
        self.responses[(("route", route), ("method", method), ("status", str(status)), ("model", model))] += 1

    def observe_generation(
        self, model: str, prompt: int, cached: int, completion: int, e2e_s: float, exemplar: Trace | None = None
    ) -> None:
        self.tokens[(("model", model), ("kind", "prompt"))] += prompt
        self.tokens[(("model", model), ("kind", "cached_prompt"))] += cached
        self.tokens[(("model", model), ("kind", "completion"))] += completion
        self.e2e.observe((("model", model),), e2e_s, exemplar)

    def observe_first_token(self, model: str, seconds: float, exemplar: Trace | None = None) -> None:
        self.ttft.observe((("model", model),), seconds, exemplar)

    def observe_inter_token(self, model: str, seconds: float, tokens: int) -> None:
        """The gap before a delta, spread over the tokens it carries (usually one)."""
        for _ in range(tokens):
            self.inter_token.observe((("model", model),), seconds / tokens)

    def observe_queue_wait(self, model: str, seconds: float, exemplar: Trace | None = None) -> None:
        self.queue_wait.observe((("model", model),), seconds, exemplar)

    def observe_rate_limited(self, limit: str) -> None:
        self.rate_limited[(("limit", limit),)] += 1

    def observe_dispatch(self, model: str, affinity: str) -> None:
        """`affinity`: hit (the worker holding the prompt's prefix had room), busy (it had none), none (no worker
        held it), overflow (no worker had room: the first to free a slot takes it)."""
        self.dispatches[(("model", model), ("affinity", affinity))] += 1

    def observe_gen_ai(
        self,
        attributes: Labels,
        duration_s: float,
        ttft_s: float | None,
        tpot_s: float | None,
        error_type: str | None,
        exemplar: Trace | None,
    ) -> None:
        """One request's convention histograms; TTFT and time per output token only for successful responses."""
        if error_type is not None:
            self.gen_ai_duration.observe((*attributes, ("error.type", error_type)), duration_s, exemplar)
            return
        self.gen_ai_duration.observe(attributes, duration_s, exemplar)
        if ttft_s is not None:
            self.gen_ai_ttft.observe(attributes, ttft_s, exemplar)
        if tpot_s is not None:
            self.gen_ai_tpot.observe(attributes, tpot_s, exemplar)

    def observe_http(self, attributes: Labels, duration_s: float, exemplar: Trace | None) -> None:
        self.http_duration.observe(attributes, duration_s, exemplar)

    def collect(self, queue: QueueStatus | None, workers: list[WorkerStatus]) -> list[Family]:
        def hist(otel: str, prom: str, unit: str, text: str, h: Histogram) -> Family:
            return Family(otel, prom, "histogram", unit, text, [(k, v) for k, v in sorted(h.points.items())])

        def counter(otel: str, prom: str, unit: str, text: str, values: dict[Labels, int]) -> Family:
            return Family(otel, prom, "counter", unit, text, [(k, float(v)) for k, v in sorted(values.items())])

        families = [
            hist(
                "gen_ai.server.request.duration",
                "gen_ai_server_request_duration_seconds",
                "s",
                "GenAI server request duration, admission to the last token (failures with error.type).",
                self.gen_ai_duration,
            ),
            hist(
                "gen_ai.server.time_to_first_token",
                "gen_ai_server_time_to_first_token_seconds",
                "s",
                "Time to generate the first token, for successful responses (queue wait and prefill).",
                self.gen_ai_ttft,
            ),
            hist(
                "gen_ai.server.time_per_output_token",
                "gen_ai_server_time_per_output_token_seconds",
                "s",
                "Time per output token after the first, for successful responses.",
                self.gen_ai_tpot,
            ),
            hist(
                "http.server.request.duration",
                "http_server_request_duration_seconds",
                "s",
                "Duration of HTTP server requests, to the end of the response body.",
                self.http_duration,
            ),
            counter(
                "herd.http.responses",
                "herd_http_responses",
                "{response}",
                "HTTP responses of this API process by route template, method, status and model (admitted requests).",
                self.responses,
            ),
            counter(
                "herd.tokens",
                "herd_tokens",
                "{token}",
                "Tokens of finished generations seen by this API process (prompt, cached_prompt, completion).",
                self.tokens,
            ),
            hist(
                "herd.time_to_first_token",
                "herd_time_to_first_token_seconds",
                "s",
                "From enqueue to the first token.",
                self.ttft,
            ),
            hist(
                "herd.request.duration",
                "herd_request_duration_seconds",
                "s",
                "From enqueue to the end of a generation.",
                self.e2e,
            ),
            hist(
                "herd.inter_token_latency",
                "herd_inter_token_latency_seconds",
                "s",
                "Between consecutive generated tokens, as the API received them.",
                self.inter_token,
            ),
            hist(
                "herd.queue.wait",
                "herd_queue_wait_seconds",
                "s",
                "From enqueue until a worker admitted the request.",
                self.queue_wait,
            ),
            counter(
                "herd.rate_limited",
                "herd_rate_limited",
                "{request}",
                "Requests refused with 429 by this API process, by the limit that ran out (requests or tokens).",
                self.rate_limited,
            ),
            counter(
                "herd.dispatches",
                "herd_dispatches",
                "{request}",
                "Interactive requests this API process put on a worker's queue, by prefix affinity: hit (the worker "
                "that served the prompt's prefix), busy (it had no free slot), none (no worker had served it), "
                "overflow (no worker had a free slot). Hit rate: hit / (hit + busy + none).",
                self.dispatches,
            ),
        ]
        return families + fleet(queue, workers)


def _worker_labels(w: WorkerStatus) -> Labels:
    return (("worker", w.worker_id), ("model", ",".join(w.models)))


# Heartbeat fields per worker: (OpenTelemetry name, Prometheus name, kind, unit, help, field of WorkerStatus or of
# its EngineStats).
_WORKER_VALUES: tuple[tuple[str, str, Kind, str, str, str], ...] = (
    ("herd.worker.slots", "herd_worker_slots", "gauge", "{slot}", "Batch slots of a worker.", "slots_total"),
    ("herd.worker.slots.busy", "herd_worker_slots_busy", "gauge", "{slot}", "Batch slots in use.", "slots_busy"),
    ("herd.worker.tokens.generated", "herd_worker_tokens_generated", "counter", "{token}",
     "Tokens a worker generated.", "tokens_generated"),
    ("herd.worker.requests", "herd_worker_requests", "counter", "{request}",
     "Generations a worker finished.", "requests_done"),
    ("herd.worker.requests.cancelled", "herd_worker_requests_cancelled", "counter", "{request}",
     "Generations cancelled.", "requests_cancelled"),
    ("herd.worker.tokens.drafted", "herd_worker_tokens_drafted", "counter", "{token}",
     "Tokens speculative decoding drafted.", "tokens_drafted"),
    ("herd.worker.tokens.accepted", "herd_worker_tokens_accepted", "counter", "{token}",
     "Drafted tokens the model accepted.", "tokens_accepted"),
    ("herd.worker.prompt_tokens", "herd_worker_prompt_tokens", "counter", "{token}",
     "Prompt tokens of admitted requests.", "prompt_tokens"),
    ("herd.worker.prefix_cache.hit_tokens", "herd_worker_prefix_cache_hit_tokens", "counter", "{token}",
     "Prompt tokens found in the prefix cache (hit rate: over herd_worker_prompt_tokens_total).", "cached_tokens"),
    ("herd.worker.spec.verify_steps", "herd_worker_spec_verify_steps", "counter", "{step}",
     "Decode steps that verified a draft; mean acceptance length = 1 + accepted / verify steps.", "verify_steps"),
    ("herd.worker.kv_cache.used", "herd_worker_kv_cache_used_cells", "gauge", "{cell}",
     "KV cells holding a token (running sequences and cached prefixes).", "kv_used"),
    ("herd.worker.kv_cache.total", "herd_worker_kv_cache_total_cells", "gauge", "{cell}",
     "KV cells of the worker's context.", "kv_total"),
)  # fmt: skip
_WORKER_HISTOGRAMS: tuple[tuple[str, str, str, str, str], ...] = (
    ("herd.worker.prefill.duration", "herd_worker_prefill_seconds", "s",
     "Per request: admission to the first token (prefill).", "prefill_s"),
    ("herd.worker.decode.duration", "herd_worker_decode_seconds", "s",
     "Per request: first token to the end (decode).", "decode_s"),
    ("herd.worker.step.tokens", "herd_worker_step_tokens", "{token}",
     "Tokens in each decode step's llama_decode (the batch's shape).", "step_tokens"),
)  # fmt: skip


def fleet(queue: QueueStatus | None, workers: list[WorkerStatus]) -> list[Family]:
    """Queue gauges and the workers' heartbeats: the same on every API replica (aggregate with max, not sum)."""
    families: list[Family] = []
    if queue is not None:
        for otel, prom, text, attr in (
            ("herd.queue.waiting", "herd_queue_waiting", "Jobs no worker has started, per model.", "waiting"),
            ("herd.queue.running", "herd_queue_running", "Jobs being run by a worker, per model.", "running"),
            ("herd.queue.oldest_wait", "herd_queue_oldest_wait_seconds", "Age of the oldest waiting job.",
             "oldest_wait_s"),
            ("herd.model.workers", "herd_model_workers", "Live workers serving the model.", "workers"),
        ):  # fmt: skip
            unit = "s" if attr == "oldest_wait_s" else "{job}"
            points: list[tuple[Labels, float | HistogramPoint]] = [
                ((("model", m.model),), float(getattr(m, attr))) for m in queue.models
            ]
            families.append(Family(otel, prom, "gauge", unit, f"{text} Fleet-wide: the same on every replica.", points))
    live = sorted(workers, key=lambda w: w.worker_id)
    for otel, prom, kind, unit, text, attr in _WORKER_VALUES:
        source = [(w, w if hasattr(w, attr) else w.engine) for w in live]
        points = [(_worker_labels(w), float(getattr(holder, attr))) for w, holder in source]
        families.append(Family(otel, prom, kind, unit, text, points))
    for otel, prom, unit, text, attr in _WORKER_HISTOGRAMS:
        points = [(_worker_labels(w), _from_buckets(getattr(w.engine, attr))) for w in live]
        families.append(Family(otel, prom, "histogram", unit, text, points))
    return families
