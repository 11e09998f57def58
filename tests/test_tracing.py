"""One trace per request across processes, by the OpenTelemetry HTTP and GenAI conventions: real OTLP receivers on
127.0.0.1 (HTTP, and gRPC in process) collect the API's and the worker's spans and metrics from a real `herd serve`.

Checked: the server span is named from the route template (an id never appears in a span name) with the HTTP
attributes; one INTERNAL GenAI span per request carries the parameters and usage (once per trace, summed over the
choices); worker spans hang under it with the client's tracestate; a 5xx, a failure after the stream started and a
worker-side failure or cancellation each leave ERROR spans with error.type; OTLP metrics arrive with the
conventions' names and buckets, and their exemplars (as /metrics's OpenMetrics ones) name the request's trace.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator

import httpx
import openai
import pytest
from herd.api.telemetry.metrics import GEN_AI_DURATION_S, GEN_AI_TPOT_S, GEN_AI_TTFT_S, HTTP_DURATION_S

from tests.conftest import MODEL, HerdServer
from tests.otlp_receiver import Collected, Record, grpc_receiver, http_receiver

SENTINEL = "SENTINEL-PROMPT-7731"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
WORKER_SPANS = {"herd.queue_wait", "herd.prefill", "herd.decode"}
SERVER, INTERNAL = 2, 1  # OTLP span kinds
UNSET, ERROR = 0, 2  # OTLP status codes
GENAI = f"chat {MODEL}"


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[int, Collected]]:
    with http_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def traced(
    redis_port: int, receiver: tuple[int, Collected], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HerdServer]:
    port, _ = receiver
    srv = HerdServer(
        redis_port,
        db=10,
        log_path=tmp_path_factory.mktemp("traced") / "serve.log",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_METRIC_EXPORT_INTERVAL="300",
        HERD_FILES_DIR=str(tmp_path_factory.mktemp("traced-files")),
    )
    yield srv
    srv.stop()


def by_name(spans: list[Record], name: str) -> Record:
    found = [s for s in spans if s["name"] == name]
    assert len(found) == 1, (name, [s["name"] for s in spans])
    return found[0]


def attrs(span: Record) -> dict[str, object]:
    value = span["attributes"]
    assert isinstance(value, dict)
    return value


def test_one_trace_from_client_through_api_and_worker(traced: HerdServer, receiver: tuple[int, Collected]) -> None:
    _, collected = receiver
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Say hi. {SENTINEL}"}],
        "max_tokens": 4,
        "n": 2,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 7,
    }
    headers = {
        "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
        "tracestate": "herd=t19,other=x",
        "user-agent": "herd-tests/19",
    }
    resp = httpx.post(f"{traced.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert resp.status_code == 200
    names = {"POST /v1/chat/completions", GENAI, "herd.enqueue", *WORKER_SPANS}
    spans = collected.wait_for_spans(CLIENT_TRACE, names)
    server, genai, enqueue = (by_name(spans, n) for n in ("POST /v1/chat/completions", GENAI, "herd.enqueue"))
    assert server["parent"] == CLIENT_SPAN and server["component"] == "api" and server["kind"] == SERVER
    assert genai["parent"] == server["span_id"] and genai["kind"] == INTERNAL
    assert enqueue["parent"] == genai["span_id"]
    worker = [s for s in spans if s["name"] in WORKER_SPANS]
    assert sorted(s["name"] for s in worker) == ["herd.decode", "herd.decode", "herd.prefill", "herd.queue_wait"]
    for span in worker:  # under the enqueue span, with the client's tracestate carried through the job
        assert span["parent"] == enqueue["span_id"] and span["component"] == "worker", span["name"]
        assert span["trace_state"] == "herd=t19,other=x"
    assert all(s["status"] == UNSET for s in spans)

    assert attrs(server) | {"client.address": None} == {
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "url.scheme": "http",
        "url.path": "/v1/chat/completions",
        "server.address": "127.0.0.1",
        "server.port": traced.port,
        "user_agent.original": "herd-tests/19",
        "network.protocol.version": "1.1",
        "http.response.status_code": 200,
        "client.address": None,
    }
    reply = resp.json()
    usage = reply["usage"]
    reasons = [c["finish_reason"] for c in sorted(reply["choices"], key=lambda c: c["index"])]
    genai_attributes = attrs(genai)
    expected = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "herd",
        "gen_ai.request.model": MODEL,
        "gen_ai.request.max_tokens": 4,
        "gen_ai.request.temperature": 0.7,
        "gen_ai.request.top_p": 0.9,
        "gen_ai.request.seed": 7,
        "gen_ai.request.choice.count": 2,
        "gen_ai.response.id": reply["id"],
        "gen_ai.response.model": MODEL,
        "gen_ai.response.finish_reasons": reasons,
        "gen_ai.usage.input_tokens": usage["prompt_tokens"],
        "gen_ai.usage.output_tokens": usage["completion_tokens"],  # both choices' tokens, summed
        "gen_ai.usage.cache_read.input_tokens": usage["prompt_tokens_details"]["cached_tokens"],
    }
    assert {k: genai_attributes.get(k) for k in expected} == expected
    # Usage once per trace: a tool summing gen_ai.usage.* over the trace gets the response's usage.
    with_usage = [s["name"] for s in spans if any(str(k).startswith("gen_ai.usage.") for k in attrs(s))]
    assert with_usage == [GENAI]
    assert SENTINEL not in repr(spans) and "Say hi" not in repr(spans)


def test_streaming_makes_no_span_per_chunk(traced: HerdServer, receiver: tuple[int, Collected]) -> None:
    _, collected = receiver
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "stream": True}
    headers = {"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
    with httpx.stream("POST", f"{traced.base_url}/v1/completions", json=body, headers=headers, timeout=60) as resp:
        chunks = [line for line in resp.iter_lines() if line.startswith("data: {")]
    assert len(chunks) >= 10
    genai = f"text_completion {MODEL}"
    spans = collected.wait_for_spans(trace_id, {"POST /v1/completions", genai, "herd.enqueue", *WORKER_SPANS})
    assert sorted(s["name"] for s in spans) == sorted(["POST /v1/completions", genai, "herd.enqueue", *WORKER_SPANS])
    assert attrs(by_name(spans, genai))["gen_ai.operation.name"] == "text_completion"


def test_span_names_are_route_templates_never_ids(traced: HerdServer, receiver: tuple[int, Collected]) -> None:
    _, collected = receiver
    cases = {
        "/v1/files/file-abc123": ("GET /v1/files/{file_id}", "/v1/files/{file_id}", 404),
        "/v1/queue/req-xyz789": ("GET /v1/queue/{request_id}", "/v1/queue/{request_id}", 200),
        "/v1/models/smollm2:135m": ("GET /v1/models/{model_id}", "/v1/models/{model_id}", 200),
        "/no/such/path-42": ("GET", None, 404),
    }
    for index, (path, (name, route, status)) in enumerate(cases.items()):
        trace_id = f"{index + 1:032x}"
        headers = {"traceparent": f"00-{trace_id}-{index + 1:016x}-01"}
        assert httpx.get(f"{traced.base_url}{path}", headers=headers, timeout=30).status_code == status, path
        (span,) = collected.wait_for_spans(trace_id, {name})
        assert attrs(span).get("http.route") == route and attrs(span)["url.path"] == path
        assert span["status"] == UNSET  # a 4xx is the client's error, not the server's
    with collected.lock:
        names = {str(s["name"]) for s in collected.spans}
    assert not any(word in name for name in names for word in ("abc123", "xyz789", "path-42", "135m ", "/smollm2"))


def test_worker_spans_for_refused_and_cancelled_sequences(traced: HerdServer, receiver: tuple[int, Collected]) -> None:
    _, collected = receiver
    # Refused by the worker (the prompt does not fit): a 400, so the server span stays UNSET; the GenAI span and the
    # worker's queue wait end in ERROR with the kind.
    trace_id = "5" * 32
    body = {"model": MODEL, "prompt": "word " * 9000, "max_tokens": 4}
    headers = {"traceparent": f"00-{trace_id}-{'6' * 16}-01"}
    resp = httpx.post(f"{traced.base_url}/v1/completions", json=body, headers=headers, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "context_length_exceeded"
    spans = collected.wait_for_spans(trace_id, {"POST /v1/completions", f"text_completion {MODEL}", "herd.queue_wait"})
    assert by_name(spans, "POST /v1/completions")["status"] == UNSET
    for name in (f"text_completion {MODEL}", "herd.queue_wait"):
        span = by_name(spans, name)
        assert span["status"] == ERROR and attrs(span)["error.type"] == "context_length_exceeded", name

    # Cancelled: the client leaves mid-stream; the worker's decode span and the GenAI span say so.
    trace_id = "7" * 32
    body = {"model": MODEL, "prompt": "Count to one thousand:", "max_tokens": 400, "stream": True}
    headers = {"traceparent": f"00-{trace_id}-{'8' * 16}-01"}
    with httpx.stream("POST", f"{traced.base_url}/v1/completions", json=body, headers=headers, timeout=60) as resp:
        for n, _ in enumerate(resp.iter_lines()):
            if n > 6:
                break
    spans = collected.wait_for_spans(trace_id, {f"text_completion {MODEL}", "herd.decode"})
    decode, genai = by_name(spans, "herd.decode"), by_name(spans, f"text_completion {MODEL}")
    for span in (decode, genai):
        assert span["status"] == ERROR and attrs(span)["error.type"] == "cancelled", span["name"]
    assert by_name(spans, "herd.prefill")["status"] == UNSET  # the sequence ended in its decode, not before


def test_otlp_metrics_over_http_with_convention_buckets_and_exemplars(
    traced: HerdServer, receiver: tuple[int, Collected]
) -> None:
    _, collected = receiver
    trace_id = "9" * 32
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Name a fruit."}], "max_tokens": 6}
    headers = {"traceparent": f"00-{trace_id}-{'a' * 16}-01"}
    assert httpx.post(f"{traced.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60).is_success

    def has_exemplar(name: str) -> bool:
        return any(trace_id in p["exemplar_traces"] for p in collected.latest_metrics(name))  # type: ignore[operator]

    collected.wait_for(lambda: has_exemplar("gen_ai.server.time_to_first_token"))
    bounds = {
        "gen_ai.server.request.duration": GEN_AI_DURATION_S,
        "gen_ai.server.time_to_first_token": GEN_AI_TTFT_S,
        "gen_ai.server.time_per_output_token": GEN_AI_TPOT_S,
        "http.server.request.duration": HTTP_DURATION_S,
    }
    # The conventions' ExplicitBucketBoundaries, as the spec lists them (not only as herd's constants say).
    assert GEN_AI_TTFT_S[:4] == (0.001, 0.005, 0.01, 0.02) and GEN_AI_DURATION_S[-1] == 81.92
    for name, expected in bounds.items():
        points = collected.latest_metrics(name)
        assert points, name
        assert all(p["bounds"] == list(expected) and p["unit"] == "s" for p in points), name
        assert has_exemplar(name), name
    (chat,) = [
        p
        for p in collected.latest_metrics("gen_ai.server.time_to_first_token")
        if p["attributes"]
        == {  # type: ignore[comparison-overlap]
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "herd",
            "gen_ai.request.model": MODEL,
            "gen_ai.response.model": MODEL,
            "herd.priority": "interactive",
        }
    ]
    assert int(chat["count"]) >= 1  # type: ignore[call-overload]
    route = [
        p
        for p in collected.latest_metrics("http.server.request.duration")
        if p["attributes"].get("http.route") == "/v1/chat/completions"  # type: ignore[attr-defined]
    ]
    assert route and route[0]["attributes"]["http.response.status_code"] == 200  # type: ignore[index]
    kinds = {p["name"]: p["kind"] for p in collected.metrics}
    assert kinds["herd.worker.slots"] == "gauge" and kinds["herd.tokens"] == "sum"

    # The same exemplar on /metrics, for a Prometheus that scrapes OpenMetrics.
    scraped = httpx.get(f"{traced.base_url}/metrics", headers={"accept": "application/openmetrics-text"}).text
    for histogram in ("gen_ai_server_time_to_first_token_seconds", "herd_time_to_first_token_seconds"):
        assert any(
            line.startswith(f"{histogram}_bucket") and f'trace_id="{trace_id}"' in line for line in scraped.splitlines()
        ), histogram


def test_batch_lines_are_labelled_apart_from_interactive(traced: HerdServer, receiver: tuple[int, Collected]) -> None:
    _, collected = receiver
    line = {
        "custom_id": "one",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
    }
    with openai.OpenAI(base_url=f"{traced.base_url}/v1", api_key="none", timeout=120, max_retries=0) as client:
        source = client.files.create(file=("one.jsonl", json.dumps(line).encode() + b"\n"), purpose="batch")
        batch = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
        collected.wait_for(lambda: client.batches.retrieve(batch.id).status == "completed", timeout=120)
    # The line's GenAI span (a root: no HTTP request carries it) and its metrics say "batch".
    collected.wait_for(lambda: any(attrs(s).get("herd.priority") == "batch" for s in list(collected.spans)))
    (span,) = [s for s in list(collected.spans) if attrs(s).get("herd.priority") == "batch"]
    assert span["name"] == GENAI and span["parent"] == "" and span["status"] == UNSET

    def batch_points() -> list[Record]:
        return [
            p
            for p in collected.latest_metrics("gen_ai.server.time_to_first_token")
            if p["attributes"].get("herd.priority") == "batch"  # type: ignore[attr-defined]
        ]

    collected.wait_for(lambda: bool(batch_points()))
    assert [p["count"] for p in batch_points()] == [1]


# ---- over gRPC, and failures that are the server's ---------------------------------------------------------------


@pytest.fixture(scope="module")
def grpc_traced(redis_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HerdServer, Collected]]:
    with grpc_receiver() as (port, collected):
        srv = HerdServer(
            redis_port,
            db=9,
            log_path=tmp_path_factory.mktemp("grpc-traced") / "serve.log",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_EXPORTER_OTLP_INSECURE="true",
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_METRIC_EXPORT_INTERVAL="300",
            HERD_QUEUE_MAX="1",  # a second request while one runs is refused: a real 503
            HERD_HEARTBEAT_TTL_S="2",
        )
        try:
            yield srv, collected
        finally:
            srv.stop()


def test_grpc_export_of_spans_and_metrics(grpc_traced: tuple[HerdServer, Collected]) -> None:
    srv, collected = grpc_traced
    trace_id = "b" * 32
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    headers = {"traceparent": f"00-{trace_id}-{'c' * 16}-01"}
    assert httpx.post(f"{srv.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60).is_success
    spans = collected.wait_for_spans(trace_id, {"POST /v1/chat/completions", GENAI, *WORKER_SPANS})
    assert by_name(spans, GENAI)["parent"] == by_name(spans, "POST /v1/chat/completions")["span_id"]
    collected.wait_for(lambda: bool(collected.latest_metrics("gen_ai.server.request.duration")))
    assert collected.latest_metrics("gen_ai.server.request.duration")[0]["bounds"] == list(GEN_AI_DURATION_S)


def test_5xx_and_a_failure_after_the_stream_started_are_errors(grpc_traced: tuple[HerdServer, Collected]) -> None:
    srv, collected = grpc_traced
    long_trace, refused_trace = "d" * 32, "e" * 32
    body = {"model": MODEL, "prompt": "Count to one thousand:", "max_tokens": 2000, "stream": True}
    headers = {"traceparent": f"00-{long_trace}-{'1' * 16}-01"}
    with httpx.stream("POST", f"{srv.base_url}/v1/completions", json=body, headers=headers, timeout=60) as stream:
        lines = stream.iter_lines()
        while not next(lines).startswith("data: {"):
            pass
        # While it runs the queue is full: a real 503 before any byte.
        refused = {"traceparent": f"00-{refused_trace}-{'2' * 16}-01"}
        short = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
        resp = httpx.post(f"{srv.base_url}/v1/completions", json=short, headers=refused, timeout=60)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "overloaded"
        # Then the worker dies mid-stream: the API notices (heartbeat gone) and ends the 200 with an error frame.
        (worker,) = srv.workers()
        os.kill(worker.pid, signal.SIGKILL)
        rest = list(lines)
    assert any('"error"' in line for line in rest), rest[-3:]

    spans = collected.wait_for_spans(refused_trace, {"POST /v1/completions", f"text_completion {MODEL}"})
    for span in spans:
        if span["name"] in ("POST /v1/completions", f"text_completion {MODEL}"):
            assert span["status"] == ERROR and attrs(span)["error.type"] == "overloaded", span["name"]
    assert attrs(by_name(spans, "POST /v1/completions"))["http.response.status_code"] == 503

    spans = collected.wait_for_spans(long_trace, {"POST /v1/completions", f"text_completion {MODEL}"})
    server, genai = by_name(spans, "POST /v1/completions"), by_name(spans, f"text_completion {MODEL}")
    assert attrs(server)["http.response.status_code"] == 200  # the status went out before the failure
    for span in (server, genai):
        assert span["status"] == ERROR and attrs(span)["error.type"] == "worker_lost", span["name"]

    def failures() -> list[Record]:
        return [
            p
            for p in collected.latest_metrics("gen_ai.server.request.duration")
            if p["attributes"].get("error.type") in ("overloaded", "worker_lost")  # type: ignore[attr-defined]
        ]

    collected.wait_for(lambda: len(failures()) == 2)
    assert sorted(int(p["count"]) for p in failures()) == [1, 1]  # type: ignore[call-overload]
    srv.wait_ready()  # the supervisor brings a worker back
