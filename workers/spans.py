"""A generation's worker-side spans (queue wait, prefill, decode), under the trace context its job carried."""

from __future__ import annotations

from herd.inference import GenerationRequest, Usage
from herd.tracing import context_from
from opentelemetry.trace import Tracer
from opentelemetry.util.types import Attributes


def record_generation(
    tracer: Tracer,
    request: GenerationRequest,
    worker_id: str,
    finish_reason: str,
    usage: Usage,
    timeline: tuple[int, int, int],
) -> None:
    """`timeline`: admitted, first token, end, in wall-clock ns; the queue wait starts when the API enqueued it."""
    admitted_ns, first_token_ns, end_ns = timeline
    attributes: Attributes = {
        "gen_ai.request.model": request.model,
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
        "gen_ai.response.finish_reasons": [finish_reason],
        "herd.cached_tokens": usage.cached_tokens,
        "herd.worker_id": worker_id,
    }
    parent = context_from(request.traceparent)
    enqueued_ns = min(int(request.enqueued_at * 1e9), admitted_ns)
    for name, start, end in (
        ("herd.queue_wait", enqueued_ns, admitted_ns),
        ("herd.prefill", admitted_ns, first_token_ns),
        ("herd.decode", first_token_ns, end_ns),
    ):
        span = tracer.start_span(name, context=parent, start_time=start, attributes=attributes)
        span.end(end_time=end)
