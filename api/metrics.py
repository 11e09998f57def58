"""Prometheus metrics: this API process's request counters and latency histograms, plus queue and worker gauges
read from Redis at scrape time (so every API replica reports the same queue). Text exposition format 0.0.4."""

from __future__ import annotations

import bisect
from collections import defaultdict

from herd.api.wire.herd import QueueStatus
from herd.inference import WorkerStatus

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in labels)
    return "{" + ",".join(escaped) + "}"


class Histogram:
    def __init__(self) -> None:
        self.buckets: dict[Labels, list[int]] = defaultdict(lambda: [0] * len(BUCKETS_S))
        self.sums: dict[Labels, float] = defaultdict(float)
        self.counts: dict[Labels, int] = defaultdict(int)

    def observe(self, labels: Labels, seconds: float) -> None:
        index = bisect.bisect_left(BUCKETS_S, seconds)
        if index < len(BUCKETS_S):
            self.buckets[labels][index] += 1
        else:
            self.buckets[labels]
        self.sums[labels] += seconds
        self.counts[labels] += 1

    def render(self, name: str) -> list[str]:
        lines = []
        for labels, counts in sorted(self.buckets.items()):
            running = 0
            for bound, n in zip(BUCKETS_S, counts, strict=True):
                running += n
                lines.append(f"{name}_bucket{_labels((*labels, ('le', repr(bound))))} {running}")
            lines.append(f"{name}_bucket{_labels((*labels, ('le', '+Inf')))} {self.counts[labels]}")
            lines.append(f"{name}_sum{_labels(labels)} {self.sums[labels]}")
            lines.append(f"{name}_count{_labels(labels)} {self.counts[labels]}")
        return lines


class Metrics:
    """Held in app.state; the gateway and the response hook record into it."""

    def __init__(self) -> None:
        self.responses: dict[Labels, int] = defaultdict(int)
        self.tokens: dict[Labels, int] = defaultdict(int)
        self.ttft = Histogram()
        self.e2e = Histogram()
        self.inter_token = Histogram()
        self.queue_wait = Histogram()
        self.rate_limited: dict[Labels, int] = defaultdict(int)

    def observe_response(self, route: str, method: str, status: int, model: str) -> None:
        """`model` is the served model of an admitted request, else "" (never a client's unchecked string)."""
        self.responses[(("route", route), ("method", method), ("status", str(status)), ("model", model))] += 1

    def observe_generation(self, model: str, prompt: int, cached: int, completion: int, e2e_s: float) -> None:
        self.tokens[(("model", model), ("kind", "prompt"))] += prompt
        self.tokens[(("model", model), ("kind", "cached_prompt"))] += cached
        self.tokens[(("model", model), ("kind", "completion"))] += completion
        self.e2e.observe((("model", model),), e2e_s)

    def observe_first_token(self, model: str, seconds: float) -> None:
        self.ttft.observe((("model", model),), seconds)

    def observe_inter_token(self, model: str, seconds: float, tokens: int) -> None:
        """The gap before a delta, spread over the tokens it carries (usually one)."""
        for _ in range(tokens):
            self.inter_token.observe((("model", model),), seconds / tokens)

    def observe_queue_wait(self, model: str, seconds: float) -> None:
        self.queue_wait.observe((("model", model),), seconds)

    def observe_rate_limited(self, limit: str) -> None:
        self.rate_limited[(("limit", limit),)] += 1

    def render(self, queue: QueueStatus | None, workers: list[WorkerStatus]) -> str:
        out: list[str] = []

        def family(name: str, kind: str, text: str, rows: list[str]) -> None:
            out.extend([f"# HELP {name} {text}", f"# TYPE {name} {kind}", *rows])

        family(
            "herd_http_responses_total",
            "counter",
            "HTTP responses of this API process by route template, method, status and model (admitted requests).",
            [f"herd_http_responses_total{_labels(k)} {v}" for k, v in sorted(self.responses.items())],
        )
        family(
            "herd_tokens_total",
            "counter",
            "Tokens of finished generations seen by this API process (prompt, cached_prompt, completion).",
            [f"herd_tokens_total{_labels(k)} {v}" for k, v in sorted(self.tokens.items())],
        )
        family(
            "herd_time_to_first_token_seconds",
            "histogram",
            "From enqueue to the first token.",
            self.ttft.render("herd_time_to_first_token_seconds"),
        )
        family(
            "herd_request_duration_seconds",
            "histogram",
            "From enqueue to the end of a generation.",
            self.e2e.render("herd_request_duration_seconds"),
        )
        family(
            "herd_inter_token_latency_seconds",
            "histogram",
            "Between consecutive generated tokens, as the API received them.",
            self.inter_token.render("herd_inter_token_latency_seconds"),
        )
        family(
            "herd_queue_wait_seconds",
            "histogram",
            "From enqueue until a worker admitted the request.",
            self.queue_wait.render("herd_queue_wait_seconds"),
        )
        family(
            "herd_rate_limited_total",
            "counter",
            "Requests refused with 429 by this API process, by the limit that ran out (requests or tokens).",
            [f"herd_rate_limited_total{_labels(k)} {v}" for k, v in sorted(self.rate_limited.items())],
        )
        if queue is not None:
            for name, text, attr in (
                ("herd_queue_waiting", "Jobs no worker has started, per model.", "waiting"),
                ("herd_queue_running", "Jobs being run by a worker, per model.", "running"),
                ("herd_queue_oldest_wait_seconds", "Age of the oldest waiting job, per model.", "oldest_wait_s"),
                ("herd_model_workers", "Live workers serving the model.", "workers"),
            ):
                rows = [f"{name}{_labels((('model', m.model),))} {getattr(m, attr)}" for m in queue.models]
                family(name, "gauge", text, rows)
        for name, kind, text, attr in (
            ("herd_worker_slots", "gauge", "Batch slots of a worker.", "slots_total"),
            ("herd_worker_slots_busy", "gauge", "Batch slots in use.", "slots_busy"),
            ("herd_worker_tokens_generated_total", "counter", "Tokens a worker generated.", "tokens_generated"),
            ("herd_worker_requests_total", "counter", "Generations a worker finished.", "requests_done"),
            ("herd_worker_requests_cancelled_total", "counter", "Generations cancelled.", "requests_cancelled"),
            ("herd_worker_tokens_drafted_total", "counter", "Tokens speculative decoding drafted.", "tokens_drafted"),
            ("herd_worker_tokens_accepted_total", "counter", "Drafted tokens the model accepted.", "tokens_accepted"),
        ):
            rows = [
                f"{name}{_labels((('worker', w.worker_id), ('model', ','.join(w.models))))} {getattr(w, attr)}"
                for w in sorted(workers, key=lambda w: w.worker_id)
            ]
            family(name, kind, text, rows)
        return "\n".join(out) + "\n"
