"""A sequence's worker-side spans (queue wait, prefill, decode) under the trace context its job carried, for every
sequence: finished, failed (`error.type` is the ErrorKind) or cancelled (`error.type` "cancelled").

Usage and finish reasons are not repeated here: the API's GenAI span has them once per request (tools that sum
`gen_ai.usage.*` over a trace would count them twice). The queue wait and prefill are the request's (choice 0);
each choice has its decode span.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from herd.inference import GenerationRequest, Usage
from herd.tracing import context_from
from opentelemetry.trace import Status, StatusCode, Tracer
from opentelemetry.util.types import Attributes


class Timeline(NamedTuple):
    """perf_counter_ns of admission (0: never admitted), first token (0: none) and the end; `wall` is
    admitted_wall_ns - admitted_ns, to turn them into wall-clock time."""

    admitted_ns: int
    first_token_ns: int
    end_ns: int
    wall: int


def timeline(admitted_ns: int, admitted_wall_ns: int, first_token_ns: int) -> Timeline:
    end = time.perf_counter_ns()
    wall = admitted_wall_ns - admitted_ns if admitted_ns else time.time_ns() - end
    return Timeline(admitted_ns, first_token_ns, end, wall)


def record_sequence(
    tracer: Tracer,
    request: GenerationRequest,
    worker_id: str,
    index: int,
    times: Timeline,
    usage: Usage | None = None,
    error_type: str | None = None,
) -> None:
    parent = context_from(request.traceparent, request.tracestate)
    end = times.wall + times.end_ns
    admitted = times.wall + times.admitted_ns if times.admitted_ns else end
    first = times.wall + times.first_token_ns if times.first_token_ns else end
    base: dict[str, str | int] = {"herd.worker_id": worker_id, "herd.request_id": request.id}
    phases: list[tuple[str, int, int, Attributes]] = []
    if index == 0:
        enqueued = min(int(request.enqueued_at * 1e9), admitted)
        phases.append(("herd.queue_wait", enqueued, admitted, base))
        if times.admitted_ns:
            prefill: dict[str, str | int] = {**base}
            if usage is not None:
                prefill.update({"herd.prompt_tokens": usage.prompt_tokens, "herd.cached_tokens": usage.cached_tokens})
            phases.append(("herd.prefill", admitted, first, prefill))
    if times.first_token_ns:
        decode: dict[str, str | int] = {**base, "herd.choice.index": index}
        if usage is not None:
            decode["herd.completion_tokens"] = usage.completion_tokens
            if usage.speculative:
                decode.update({"herd.spec.drafted": usage.drafted_tokens, "herd.spec.accepted": usage.accepted_tokens})
        phases.append(("herd.decode", first, end, decode))
    for position, (name, start, stop, attributes) in enumerate(phases):
        span = tracer.start_span(name, context=parent, start_time=start, attributes=attributes)
        if error_type is not None and position == len(phases) - 1:  # the phase the sequence ended in
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, error_type))
        span.end(end_time=stop)
