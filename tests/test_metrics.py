"""Prometheus /metrics after known traffic: counters move by exactly what was sent, gauges show queue and workers."""

from __future__ import annotations

import re

import httpx

from tests.conftest import MODEL, HerdServer

# Label values may hold braces themselves (route templates such as /v1/models/{model_id}).
LINE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")


def scrape(server: HerdServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = httpx.get(f"{server.base_url}/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in resp.text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        assert match, line
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counters_follow_known_traffic(server: HerdServer) -> None:
    before = scrape(server)
    completion_tokens = prompt_tokens = 0
    for question in ("Name a fruit.", "Name a color."):
        body = {"model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": 5}
        usage = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60).json()["usage"]
        completion_tokens += usage["completion_tokens"]
        prompt_tokens += usage["prompt_tokens"]
    missing = httpx.post(f"{server.base_url}/v1/chat/completions", json={**body, "model": "nope"})
    assert missing.status_code == 404
    after = scrape(server)

    ok = {"route": "/v1/chat/completions", "method": "POST", "status": "200", "model": MODEL}
    assert value(after, "herd_http_responses_total", **ok) - value(before, "herd_http_responses_total", **ok) == 2
    not_found = {**ok, "status": "404", "model": ""}  # an unknown model is not a label value
    assert (
        value(after, "herd_http_responses_total", **not_found) - value(before, "herd_http_responses_total", **not_found)
        == 1
    )
    for kind, expected in (("completion", completion_tokens), ("prompt", prompt_tokens)):
        delta = value(after, "herd_tokens_total", model=MODEL, kind=kind) - value(
            before, "herd_tokens_total", model=MODEL, kind=kind
        )
        assert delta == expected, kind
    ttft_count = "herd_time_to_first_token_seconds_count"
    assert value(after, ttft_count, model=MODEL) - value(before, ttft_count, model=MODEL) == 2
    inf = value(after, "herd_time_to_first_token_seconds_bucket", model=MODEL, le="+Inf")
    assert inf == value(after, ttft_count, model=MODEL)

    assert (("herd_queue_waiting", frozenset({("model", MODEL)}))) in after
    workers = [labels for name, labels in after if name == "herd_worker_slots"]
    assert workers and all(dict(labels)["model"] == MODEL for labels in workers)
    assert sum(v for (name, _), v in after.items() if name == "herd_worker_slots") >= 8
