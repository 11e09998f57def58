"""One trace per request across processes: a real OTLP/HTTP receiver on 127.0.0.1 collects the API's and the
worker's spans, which must join the client's trace with the right parents, GenAI attributes and no prompt text."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import MODEL, HerdServer, free_port

SENTINEL = "SENTINEL-PROMPT-7731"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Collected:
    def __init__(self) -> None:
        self.spans: list[dict[str, object]] = []
        self.lock = threading.Lock()

    def of_trace(self, trace_id: str) -> list[dict[str, object]]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]


def _value(v: object) -> object:
    kind = v.WhichOneof("value")  # type: ignore[attr-defined]
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]  # type: ignore[attr-defined]
    return getattr(v, kind) if kind else None


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[int, Collected]]:
    collected = Collected()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        with collected.lock:
                            collected.spans.append(
                                {
                                    "trace_id": span.trace_id.hex(),
                                    "span_id": span.span_id.hex(),
                                    "parent": span.parent_span_id.hex(),
                                    "name": span.name,
                                    "component": resource.get("herd.component"),
                                    "attributes": {a.key: _value(a.value) for a in span.attributes},
                                }
                            )
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
    yield port, collected
    httpd.shutdown()
    httpd.server_close()


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
    )
    yield srv
    srv.stop()


def wait_for_spans(collected: Collected, trace_id: str, names: set[str]) -> list[dict[str, object]]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        spans = collected.of_trace(trace_id)
        if names <= {s["name"] for s in spans}:
            time.sleep(0.3)  # let stragglers of the same trace arrive
            return collected.of_trace(trace_id)
        time.sleep(0.1)
    raise AssertionError(f"spans seen: {[s['name'] for s in collected.of_trace(trace_id)]}")


WORKER_SPANS = {"herd.queue_wait", "herd.prefill", "herd.decode"}


def test_one_trace_from_client_through_api_and_worker(traced: HerdServer, receiver: tuple[int, Collected]) -> None:
    _, collected = receiver
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"Say hi. {SENTINEL}"}], "max_tokens": 4}
    headers = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
    resp = httpx.post(f"{traced.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    assert resp.status_code == 200
    spans = wait_for_spans(collected, CLIENT_TRACE, {"POST /v1/chat/completions", "herd.enqueue", *WORKER_SPANS})
    by_name = {s["name"]: s for s in spans}
    server, enqueue = by_name["POST /v1/chat/completions"], by_name["herd.enqueue"]
    assert server["parent"] == CLIENT_SPAN and server["component"] == "api"
    assert enqueue["parent"] == server["span_id"]
    for name in WORKER_SPANS:
        assert by_name[name]["parent"] == enqueue["span_id"], name
        assert by_name[name]["component"] == "worker"
    attributes = server["attributes"]
    assert isinstance(attributes, dict)
    usage = resp.json()["usage"]
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == MODEL
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert attributes["gen_ai.response.finish_reasons"] == [resp.json()["choices"][0]["finish_reason"]]
    assert float(attributes["gen_ai.server.time_to_first_token"]) > 0  # type: ignore[arg-type]
    assert attributes["http.response.status_code"] == 200
    assert SENTINEL not in repr(spans) and "Say hi" not in repr(spans)


def test_streaming_makes_no_span_per_chunk(traced: HerdServer, receiver: tuple[int, Collected]) -> None:
    _, collected = receiver
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "stream": True}
    headers = {"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
    with httpx.stream("POST", f"{traced.base_url}/v1/completions", json=body, headers=headers, timeout=60) as resp:
        chunks = [line for line in resp.iter_lines() if line.startswith("data: {")]
    assert len(chunks) >= 10
    spans = wait_for_spans(collected, trace_id, {"POST /v1/completions", "herd.enqueue", *WORKER_SPANS})
    assert sorted(s["name"] for s in spans) == sorted(["POST /v1/completions", "herd.enqueue", *WORKER_SPANS])
    server = next(s for s in spans if s["name"] == "POST /v1/completions")
    assert server["attributes"]["gen_ai.operation.name"] == "text_completion"  # type: ignore[index]
