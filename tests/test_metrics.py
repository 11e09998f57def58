"""/metrics after known traffic: herd's counters move by exactly what was sent; the OpenTelemetry GenAI and HTTP
histograms (conventions' names, buckets and attributes) get one observation per request, failures with error.type;
the engine's measures arrive from the workers' heartbeats; OpenMetrics (on Accept) passes a real parser; and every
query of the Grafana dashboard shipped in helm/herd/dashboards names metrics and labels herd really exports."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
from herd.api.telemetry.metrics import GEN_AI_DURATION_S, GEN_AI_TTFT_S, HTTP_DURATION_S
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests.conftest import MODEL, HerdServer

DASHBOARD = Path(__file__).resolve().parents[1] / "helm" / "herd" / "dashboards" / "herd.json"
# Label values may hold braces themselves (route templates such as /v1/models/{model_id}).
LINE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
CHAT = {
    "gen_ai_operation_name": "chat",
    "gen_ai_provider_name": "herd",
    "gen_ai_request_model": MODEL,
    "gen_ai_response_model": MODEL,
    "herd_priority": "interactive",
}


def scrape(server: HerdServer) -> Samples:
    resp = httpx.get(f"{server.base_url}/metrics", timeout=60)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in resp.text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        assert match, line
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def chat(server: HerdServer, content: str, max_tokens: int = 5) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)


def test_counters_follow_known_traffic(server: HerdServer) -> None:
    before = scrape(server)
    completion_tokens = prompt_tokens = 0
    for question in ("Name a fruit.", "Name a color."):
        usage = chat(server, question).json()["usage"]
        completion_tokens += usage["completion_tokens"]
        prompt_tokens += usage["prompt_tokens"]
    missing = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "nope", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5},
    )
    assert missing.status_code == 404
    after = scrape(server)

    ok = {"route": "/v1/chat/completions", "method": "POST", "status": "200", "model": MODEL}
    assert delta(before, after, "herd_http_responses_total", **ok) == 2
    not_found = {**ok, "status": "404", "model": ""}  # an unknown model is not a label value
    assert delta(before, after, "herd_http_responses_total", **not_found) == 1
    for kind, expected in (("completion", completion_tokens), ("prompt", prompt_tokens)):
        assert delta(before, after, "herd_tokens_total", model=MODEL, kind=kind) == expected, kind
    ttft_count = "herd_time_to_first_token_seconds_count"
    assert delta(before, after, ttft_count, model=MODEL) == 2
    inf = value(after, "herd_time_to_first_token_seconds_bucket", model=MODEL, le="+Inf")
    assert inf == value(after, ttft_count, model=MODEL)

    assert (("herd_queue_waiting", frozenset({("model", MODEL)}))) in after
    workers = [labels for name, labels in after if name == "herd_worker_slots"]
    assert workers and all(dict(labels)["model"] == MODEL for labels in workers)
    assert sum(v for (name, _), v in after.items() if name == "herd_worker_slots") >= 8


def test_convention_histograms_one_observation_per_request(server: HerdServer) -> None:
    before = scrape(server)
    assert chat(server, "Name a city.", max_tokens=6).status_code == 200
    stream = {"model": MODEL, "prompt": "Once upon", "max_tokens": 6, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=stream, timeout=60) as resp:
        assert sum(1 for line in resp.iter_lines() if line.startswith("data: {")) >= 2
    too_long = {"model": MODEL, "prompt": "word " * 9000, "max_tokens": 4}
    refused = httpx.post(f"{server.base_url}/v1/completions", json=too_long, timeout=120)
    assert refused.status_code == 400
    after = scrape(server)

    text = {**CHAT, "gen_ai_operation_name": "text_completion"}
    for name in (
        "gen_ai_server_request_duration_seconds_count",
        "gen_ai_server_time_to_first_token_seconds_count",
        "gen_ai_server_time_per_output_token_seconds_count",
    ):
        assert delta(before, after, name, **CHAT) == 1, name
        assert delta(before, after, name, **text) == 1, name  # the streamed request: once, not per chunk
    # The refusal: a request duration with its error.type, and no TTFT (successful responses only).
    failed = {**text, "error_type": "context_length_exceeded"}
    assert delta(before, after, "gen_ai_server_request_duration_seconds_count", **failed) == 1
    assert delta(before, after, "gen_ai_server_time_to_first_token_seconds_count", **failed) == 0

    def bounds(name: str, **labels: str) -> list[float]:
        found = [
            dict(k)["le"] for (n, k), _ in after.items() if n == f"{name}_bucket" and labels.items() <= dict(k).items()
        ]
        return sorted(float(b) for b in set(found) if b != "+Inf")

    assert bounds("gen_ai_server_request_duration_seconds", **CHAT) == list(GEN_AI_DURATION_S)
    assert bounds("gen_ai_server_time_to_first_token_seconds", **CHAT) == list(GEN_AI_TTFT_S)
    route = {"http_route": "/v1/completions", "http_request_method": "POST", "url_scheme": "http"}
    assert bounds("http_server_request_duration_seconds", **route, http_response_status_code="200") == list(
        HTTP_DURATION_S
    )
    assert (
        delta(before, after, "http_server_request_duration_seconds_count", **route, http_response_status_code="200")
        == 1
    )
    assert (
        delta(before, after, "http_server_request_duration_seconds_count", **route, http_response_status_code="400")
        == 1
    )


def test_engine_measures_from_the_heartbeat(server: HerdServer) -> None:
    """Prompt and prefix-cache tokens, prefill and decode per request, tokens per step, KV cells: all from workers."""
    (worker,) = server.workers()
    labels = {"worker": worker.worker_id, "model": MODEL}
    prompt = "You are a careful assistant. " * 30 + "Answer briefly: what is herd?"
    # The heartbeat lags up to a second behind the worker: start from a scrape that earlier tests' requests have
    # all reached (two scrapes a heartbeat apart agree).
    before = scrape(server)
    for _ in range(20):
        time.sleep(1.2)
        again = scrape(server)
        settled = value(again, "herd_worker_prefill_seconds_count", **labels)
        if settled == value(before, "herd_worker_prefill_seconds_count", **labels):
            break
        before = again
    usages = [chat(server, prompt, max_tokens=3).json()["usage"] for _ in range(2)]
    cached = usages[1]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0  # the second request found the first one's prompt in the cache

    deadline = time.monotonic() + 10  # the heartbeat comes every second
    while True:
        after = scrape(server)
        if delta(before, after, "herd_worker_prefill_seconds_count", **labels) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert delta(before, after, "herd_worker_prefill_seconds_count", **labels) == 2
    assert delta(before, after, "herd_worker_decode_seconds_count", **labels) == 2
    assert delta(before, after, "herd_worker_prompt_tokens_total", **labels) == sum(u["prompt_tokens"] for u in usages)
    # Every request's cache hits count: the first one may reuse a message an earlier test's prompt shared with it.
    all_cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    assert delta(before, after, "herd_worker_prefix_cache_hit_tokens_total", **labels) == all_cached
    assert delta(before, after, "herd_worker_step_tokens_count", **labels) >= 2  # each request decoded twice at least
    assert (
        0
        < value(after, "herd_worker_kv_cache_used_cells", **labels)
        <= value(after, "herd_worker_kv_cache_total_cells", **labels)
    )


def test_openmetrics_on_accept(server: HerdServer) -> None:
    assert chat(server, "Hello").status_code == 200
    resp = httpx.get(
        f"{server.base_url}/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}, timeout=60
    )
    assert resp.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert resp.text.endswith("# EOF\n")
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}  # a strict parser: fails on bad lines
    assert families["gen_ai_server_time_to_first_token_seconds"].type == "histogram"
    assert families["herd_tokens"].type == "counter"
    assert any(s.name == "herd_tokens_total" for s in families["herd_tokens"].samples)


# ---- the Grafana dashboard ------------------------------------------------------------------------------------

FUNCTIONS = {"histogram_quantile", "sum", "max", "min", "avg", "rate", "increase", "by", "without"}


def selectors(expr: str) -> tuple[list[tuple[str, list[tuple[str, str, str]]]], set[str]]:
    """The metric selectors of a PromQL expression (name, [(label, op, value)]) and the labels it groups by (or, in a
    template variable's label_values(metric, label), lists)."""
    grouped = {
        label.strip() for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr) for label in group.split(",")
    }
    grouped |= set(re.findall(r"label_values\(\s*\w+\s*,\s*(\w+)\s*\)", expr))  # a template variable's query
    bare = re.sub(r"label_values\(\s*(\w+)\s*,\s*\w+\s*\)", r"\1", expr)
    bare = re.sub(r"\b(?:by|without)\s*\([^)]*\)", " ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)  # range selectors: [$__rate_interval]
    found = []
    for name, body in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", bare):
        if name in FUNCTIONS or re.fullmatch(r"[0-9.e]+", name):
            continue
        matchers = re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', body)
        found.append((name, matchers))
    return found, grouped - {"", "le"}


def matches(labels: dict[str, str], op: str, label: str, wanted: str) -> bool:
    have = labels.get(label, "")
    return {
        "=": have == wanted,
        "!=": have != wanted,
        "=~": re.fullmatch(wanted, have) is not None,
        "!~": re.fullmatch(wanted, have) is None,
    }[op]


def test_dashboard_queries_name_what_herd_exports(server: HerdServer) -> None:
    # Real traffic first, including a failure, so the families the panels read all have series.
    assert chat(server, "Name a tree.").status_code == 200
    assert (
        httpx.post(
            f"{server.base_url}/v1/completions", json={"model": MODEL, "prompt": "x " * 9000}, timeout=120
        ).status_code
        == 400
    )
    resp = httpx.get(f"{server.base_url}/metrics", headers={"accept": "application/openmetrics-text"}, timeout=60)
    series: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            series.setdefault(sample.name, []).append(dict(sample.labels))

    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    expressions += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    assert len(expressions) >= 20
    checked = set()
    for expr in expressions:
        found, grouped = selectors(expr)
        assert found, expr
        used_labels: set[str] = set()
        for name, matchers in found:
            assert name in series, f"{name} is not exported (in {expr})"
            labels_of = series[name]
            used_labels |= {k for labels in labels_of for k in labels}
            for label, op, wanted in matchers:
                assert any(label in labels for labels in labels_of), f"{name} has no label {label} (in {expr})"
                wanted = wanted.replace("$model", ".*")
                if "5.." not in wanted:  # a 5xx filter may match nothing while herd is healthy
                    assert any(matches(labels, op, label, wanted) for labels in labels_of), (name, label, op, wanted)
            checked.add(name)
        assert not grouped - used_labels, f"grouping by labels the metrics lack: {expr}"
    for needed in (
        "gen_ai_server_time_to_first_token_seconds_bucket",
        "gen_ai_server_time_per_output_token_seconds_bucket",
        "herd_queue_waiting",
        "herd_worker_prefix_cache_hit_tokens_total",
        "herd_worker_tokens_accepted_total",
        "herd_worker_spec_verify_steps_total",
    ):
        assert needed in checked, needed


def test_heartbeat_engine_stats_render_as_families() -> None:
    """A unit check of the heartbeat -> exposition path (the live tests above cannot make a worker speculate)."""
    from herd.api.telemetry.exposition import OPENMETRICS, render
    from herd.api.telemetry.metrics import fleet
    from herd.inference import Buckets, EngineStats, WorkerStatus

    engine = EngineStats(
        prefill_s=Buckets((0.1, 1.0), (2, 1, 0), 0.4, 3),
        step_tokens=Buckets((1.0, 2.0, 4.0), (5, 0, 3, 1), 30.0, 9),
        prompt_tokens=100,
        cached_tokens=64,
        verify_steps=7,
        kv_used=300,
        kv_total=16384,
    )
    worker = WorkerStatus("w1", (MODEL,), 2048, 8, 2, 40, 3, 1, 1, "h", 0.0, 20, 14, engine)
    text = render(fleet(None, [worker]), OPENMETRICS)
    samples = {
        (s.name, s.labels.get("le")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.labels.get("worker") == "w1"
    }
    assert samples[("herd_worker_spec_verify_steps_total", None)] == 7
    assert samples[("herd_worker_tokens_accepted_total", None)] == 14  # mean acceptance length: 1 + 14 / 7 = 3
    assert samples[("herd_worker_prefix_cache_hit_tokens_total", None)] == 64
    assert samples[("herd_worker_kv_cache_used_cells", None)] == 300
    assert samples[("herd_worker_prefill_seconds_bucket", "0.1")] == 2  # cumulative, as Prometheus reads them
    assert samples[("herd_worker_prefill_seconds_bucket", "+Inf")] == 3
    assert (
        samples[("herd_worker_step_tokens_bucket", "4.0")] == 8
        and samples[("herd_worker_step_tokens_count", None)] == 9
    )
