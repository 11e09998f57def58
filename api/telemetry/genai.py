"""One request's GenAI telemetry, by the OpenTelemetry GenAI conventions: an INTERNAL span
`{gen_ai.operation.name} {gen_ai.request.model}` under the HTTP server span, with the request's parameters, and at
its end the response's id, model, finish reasons and usage written ONCE (summed over the choices when n > 1: the
prompt counted once, the completions added up); the `gen_ai.server.*` histograms observed once per request; herd's
own histograms (queue wait, TTFT, inter-token gaps, tokens) as before.

A failure (a refusal, a worker that died, an in-band error after the stream started) sets `error.type` (the
ErrorKind) and ERROR on the GenAI span, and on the server span too when it is a server-side failure (a 5xx kind):
a 200 whose stream then broke is still a failed request. A request the client abandoned ends as "cancelled".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from herd.api.errors import TABLE
from herd.api.telemetry.http_spans import CURRENT
from herd.api.telemetry.metrics import Labels, Metrics, Trace
from herd.errors import ServiceError
from herd.inference import (
    Embedded,
    EmbeddingRequest,
    Finished,
    GenerationRequest,
    Started,
    StreamEvent,
    TokenDelta,
)
from herd.tracing import trace_fields
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode, Tracer, use_span

PROVIDER = "herd"  # gen_ai.provider.name: not one of the conventions' well-known values, so the server's own name
# The id a client sees for the request, by route family (the API's own prefixes; any other route: the request id).
_RESPONSE_ID_PREFIXES = (("/v1/chat/", "chatcmpl-"), ("/v1/completions", "cmpl-"), ("/v1/responses", "resp_"))


def operation(request: GenerationRequest | EmbeddingRequest) -> str:
    if isinstance(request, EmbeddingRequest):
        return "embeddings"
    return "chat" if request.messages is not None else "text_completion"


def _request_attributes(request: GenerationRequest | EmbeddingRequest) -> dict[str, str | int | float]:
    if isinstance(request, EmbeddingRequest):
        return {"gen_ai.embeddings.dimension.count": request.dimensions} if request.dimensions else {}
    sampling = request.sampling
    attributes: dict[str, str | int | float] = {"gen_ai.request.temperature": sampling.temperature}
    if sampling.top_p != 1.0:
        attributes["gen_ai.request.top_p"] = sampling.top_p
    if sampling.top_k:
        attributes["gen_ai.request.top_k"] = sampling.top_k
    if request.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = request.max_tokens
    if sampling.seed is not None:
        attributes["gen_ai.request.seed"] = sampling.seed
    if request.n != 1:
        attributes["gen_ai.request.choice.count"] = request.n
    if sampling.presence_penalty:
        attributes["gen_ai.request.presence_penalty"] = sampling.presence_penalty
    if sampling.frequency_penalty:
        attributes["gen_ai.request.frequency_penalty"] = sampling.frequency_penalty
    return attributes


def _response_id(request_id: str, route: str) -> str:
    prefix = next((p for start, p in _RESPONSE_ID_PREFIXES if route.startswith(start)), "")
    return f"{prefix}{request_id}"


class RequestTelemetry:
    """Created when the gateway opens a request; sees every event of its stream; `close()` ends it (idempotent)."""

    def __init__(
        self,
        tracer: Tracer | None,
        metrics: Metrics | None,
        request: GenerationRequest | EmbeddingRequest,
        low_priority: bool = False,
    ) -> None:
        self.request = request
        self._metrics = metrics
        self._server = CURRENT.get()
        self._route = str(self._server.route) if self._server is not None else ""
        self._operation = operation(request)
        self._opened = time.monotonic()
        self._labels: Labels = (
            ("gen_ai.operation.name", self._operation),
            ("gen_ai.provider.name", PROVIDER),
            ("gen_ai.request.model", request.model),
            ("gen_ai.response.model", request.model),  # herd serves the model asked for, under that name
            ("herd.priority", "batch" if low_priority else "interactive"),
        )
        self.span: Span = INVALID_SPAN
        if tracer is not None:
            attributes: dict[str, str | int | float] = {
                **dict(self._labels[:3]),
                **_request_attributes(request),
                "herd.request_id": request.id,
                "herd.priority": self._labels[4][1],
            }
            name = f"{self._operation} {request.model}"
            self.span = tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attributes)
        self._tracer = tracer
        self._first_token_at: float | None = None
        self._last_token_at = 0.0
        self._input_tokens = 0
        self._cached_tokens = 0
        self._output_tokens = 0
        self._longest_choice = 0
        self._finish_reasons: dict[int, str] = {}
        self._worker_id = ""
        self._error: str | None = None
        self._completed = False
        self._closed = False

    @contextlib.contextmanager
    def job_context(self) -> Iterator[dict[str, str | None]]:
        """A `herd.enqueue` span under the GenAI span; yields the trace fields the job carries to the worker."""
        if self._tracer is None:
            yield {"traceparent": None, "tracestate": None}
            return
        with use_span(self.span, end_on_exit=False), self._tracer.start_as_current_span("herd.enqueue") as enqueue:
            yield trace_fields(enqueue)

    def event(self, event: StreamEvent) -> None:
        now = time.monotonic()
        metrics, model = self._metrics, self.request.model
        since_enqueue = time.time() - self.request.enqueued_at
        exemplar = self._exemplar()
        if isinstance(event, Started):
            self._worker_id = event.worker_id
            if metrics is not None:
                metrics.observe_queue_wait(model, since_enqueue, exemplar)
        elif isinstance(event, TokenDelta):
            if self._first_token_at is None:
                self._first_token_at = now
                if metrics is not None:
                    metrics.observe_first_token(model, since_enqueue, exemplar)
            elif metrics is not None and event.tokens:
                metrics.observe_inter_token(model, now - self._last_token_at, event.tokens)
            self._last_token_at = now
        elif isinstance(event, Finished):
            usage = event.usage
            self._input_tokens = usage.prompt_tokens  # every choice's usage has the whole prompt: counted once
            self._cached_tokens = usage.cached_tokens if event.index == 0 else self._cached_tokens
            self._output_tokens += usage.completion_tokens
            self._longest_choice = max(self._longest_choice, usage.completion_tokens)
            self._finish_reasons[event.index] = event.finish_reason
            if metrics is not None:
                first = event.index == 0
                metrics.observe_generation(
                    model,
                    usage.prompt_tokens if first else 0,
                    usage.cached_tokens if first else 0,
                    usage.completion_tokens,
                    since_enqueue,
                    exemplar,
                )
            choices = self.request.n if isinstance(self.request, GenerationRequest) else 1
            self._completed = len(self._finish_reasons) >= choices
        elif isinstance(event, Embedded):
            self._input_tokens = event.prompt_tokens
            self._completed = True
            if metrics is not None:
                metrics.observe_generation(model, event.prompt_tokens, 0, 0, since_enqueue, exemplar)

    def failed(self, exc: BaseException) -> None:
        """The request ended in `exc` (before the response or after it started); the first error is the one kept."""
        if self._error is not None or self._closed or isinstance(exc, asyncio.CancelledError):
            return  # a cancellation is the client's leaving: close() records it as "cancelled"
        kind = exc.kind if isinstance(exc, ServiceError) else None
        self._error = str(kind) if kind is not None else type(exc).__qualname__
        if self._server is not None and (kind is None or TABLE[kind].status >= 500):
            self._server.fail(self._error)

    def close(self) -> None:
        if self._closed:
            return
        if self._error is None and not self._completed:
            self._error = "cancelled"  # the client went away (or the route gave up) before the end
        self._closed = True
        end = time.monotonic()
        span = self.span
        attributes: dict[str, str | int | list[str]] = {
            "gen_ai.response.id": _response_id(self.request.id, self._route),
            "gen_ai.response.model": self.request.model,
            "gen_ai.usage.input_tokens": self._input_tokens,
        }
        if isinstance(self.request, GenerationRequest):
            attributes["gen_ai.usage.output_tokens"] = self._output_tokens
            attributes["gen_ai.usage.cache_read.input_tokens"] = self._cached_tokens
            attributes["gen_ai.response.finish_reasons"] = [r for _, r in sorted(self._finish_reasons.items())]
        if self._worker_id:
            attributes["herd.worker_id"] = self._worker_id
        span.set_attributes(attributes)
        if self._error is not None:
            span.set_attribute("error.type", self._error)
            span.set_status(Status(StatusCode.ERROR, self._error))
        span.end()
        if self._metrics is not None:
            ttft = self._first_token_at - self._opened if self._first_token_at is not None else None
            tpot = None
            if self._first_token_at is not None and self._longest_choice > 1:
                tpot = (end - self._first_token_at) / (self._longest_choice - 1)
            self._metrics.observe_gen_ai(self._labels, end - self._opened, ttft, tpot, self._error, self._exemplar())

    def _exemplar(self) -> Trace | None:
        """The GenAI span's ids, for the histograms' exemplars (None when tracing is off)."""
        context = self.span.get_span_context()
        return (f"{context.trace_id:032x}", f"{context.span_id:016x}") if context.is_valid else None
