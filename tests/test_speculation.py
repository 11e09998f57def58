"""Speculative decoding (HERD_SPECULATE): output with it equals output without it, across concurrent requests, for
prompt lookup and for a draft model: greedy, and sampled with a seed (the acceptance rule draws each token from the
model's own sampler, so the same seed draws the same tokens), with penalties, a grammar or logprobs; drafted and
accepted counts reach usage, Ollama and /metrics.

The draft-model server uses the bundled model as its own draft (the only GGUF with this vocabulary here): that
proves the draft path's bookkeeping (catch-up, per-position drafting, trimming), not a speed-up.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import ollama
import openai
import pytest
from herd.config import bundled_model_path
from herd.workers.speculate import Acceptance, NgramIndex, plan, prompt_lookup

from tests.conftest import MODEL, HerdServer

TEXT = (
    "The old harbour town of Vell lies at the mouth of a slow brown river. Every morning the fishing boats leave "
    "before dawn and return at noon with herring, cod and sometimes a lost crab pot. The market opens when the "
    "church bell rings twelve times, and Mara sells bread from a blue cart."
)
QUESTIONS = (
    f"Repeat the following text exactly:\n\n{TEXT}",
    f"Copy this text, replacing Vell with Mora:\n\n{TEXT}",
    f"Which fish do the boats bring back? Quote the text.\n\n{TEXT}",
    "List the numbers from 1 to 40, one per line.",
    "Write a long story about a dragon who guards a library.",
    "Explain how a lighthouse works.",
    f"Summarise in one sentence:\n\n{TEXT}",
    "Write the alphabet three times.",
    "Name ten colours.",
    "Describe a storm at sea.",
    f"Repeat this text twice:\n\n{TEXT}",
    "What is two plus two? Answer, then repeat the answer ten times.",
)
MAX_TOKENS = 64
SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "story",
        "schema": {
            "type": "object",
            "properties": {"title": {"type": "string"}, "words": {"type": "array", "items": {"type": "string"}}},
            "required": ["title", "words"],
        },
    },
}


def chat(client: openai.OpenAI, question: str, **extra: Any) -> tuple[str, dict[str, Any] | None]:
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=MAX_TOKENS, **extra
    )
    assert resp.usage is not None
    spec = (resp.usage.model_extra or {}).get("speculation")
    return resp.choices[0].message.content or "", spec


def workload(server: HerdServer) -> dict[str, Any]:
    """Every question sequentially, then all of them 8 at a time (so drafts of several sequences share a decode)."""
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=900) as client:
        sequential = [chat(client, q, temperature=0) for q in QUESTIONS]
        with ThreadPoolExecutor(8) as pool:
            concurrent = list(pool.map(lambda q: chat(client, q, temperature=0), QUESTIONS))
        with ThreadPoolExecutor(4) as pool:
            sampled = list(pool.map(lambda i: chat(client, QUESTIONS[i], temperature=0.8, seed=i), range(4)))
        shaped = [
            chat(client, QUESTIONS[1], temperature=1.0, top_p=0.9, frequency_penalty=0.5, seed=7),
            chat(client, QUESTIONS[2], temperature=0, logprobs=True, top_logprobs=2),
            chat(client, QUESTIONS[4], temperature=0.7, seed=3, response_format=SCHEMA),
        ]
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    return {"sequential": sequential, "concurrent": concurrent, "sampled": sampled + shaped, "metrics": metrics}


MODES = {
    "plain": {},
    # spec_min: draft whenever there is a match, so the checks below do not depend on this CPU's decode costs
    # (the planner's choices have unit tests of their own, at the end).
    "lookup": {"HERD_SPECULATE": f"{MODEL}=lookup", "HERD_SPEC_MIN": "2"},
    # The model drafting for itself never pays, so the planner would not draft: spec_min makes it (4 per step).
    "draft": {
        "HERD_MODELS": f"{MODEL}={bundled_model_path()}?spec_min=4",
        "HERD_SPECULATE": f"{MODEL}=draft:{bundled_model_path()}",
    },
}


@pytest.fixture(scope="module")
def results(redis_port: int, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, Any]]:
    """The same workload on one server per mode, started when a test first asks for it (one server at a time)."""
    tmp = tmp_path_factory.mktemp("spec")
    done: dict[str, dict[str, Any]] = {}

    def get(mode: str) -> dict[str, Any]:
        if mode not in done:
            srv = HerdServer(redis_port, 2, tmp / f"{mode}.log", True, **MODES[mode])
            try:
                done[mode] = workload(srv)
                with ollama.Client(host=srv.base_url, timeout=900) as client:
                    done[mode]["ollama"] = client.generate(
                        model=MODEL,
                        prompt=QUESTIONS[0],
                        options={"temperature": 0, "num_predict": 32},  # Ollama's default repeat_penalty 1.1
                    )
                # The ollama client's models drop fields they do not know: read the extension off the wire.
                body = {
                    "model": MODEL,
                    "prompt": QUESTIONS[0],
                    "stream": False,
                    "options": {"temperature": 0, "num_predict": 32},
                }
                done[mode]["ollama_raw"] = httpx.post(f"{srv.base_url}/api/generate", json=body, timeout=900).json()
            finally:
                srv.stop()
        return done[mode]

    return get


def differing(a: list[tuple[str, Any]], b: list[tuple[str, Any]]) -> list[tuple[int, str, str]]:
    return [(i, x, y) for i, ((x, _), (y, _)) in enumerate(zip(a, b, strict=True)) if x != y]


@pytest.mark.parametrize("mode", ["lookup", "draft"])
def test_output_is_unchanged(results: Callable[[str], dict[str, Any]], mode: str) -> None:
    plain, spec = results("plain"), results(mode)
    for run in ("sequential", "concurrent", "sampled"):
        assert differing(plain[run], spec[run]) == [], run
    assert len({text for text, _ in plain["sampled"][:4]}) == 4  # sampled, not one fixed answer
    assert plain["ollama"].response == spec["ollama"].response


@pytest.mark.parametrize("mode", ["lookup", "draft"])
def test_usage_reports_drafted_and_accepted(results: Callable[[str], dict[str, Any]], mode: str) -> None:
    plain, spec = results("plain"), results(mode)
    assert all(s is None for _, s in plain["sequential"]), "no speculation field unless the model speculates"
    stats = [s for _, s in spec["sequential"] + spec["concurrent"]]
    assert all(s is not None and 0 <= s["accepted_tokens"] <= s["drafted_tokens"] for s in stats), stats
    # The repeat prompt is what speculation is for: most of its tokens come from accepted drafts.
    repeat = spec["sequential"][0][1]
    assert repeat["accepted_tokens"] >= MAX_TOKENS // 2, repeat
    sampled = [s for _, s in spec["sampled"]]
    assert all(s is not None and 0 <= s["accepted_tokens"] <= s["drafted_tokens"] for s in sampled), sampled
    assert sum(s["accepted_tokens"] for s in sampled) > 0, sampled
    final = spec["ollama_raw"]
    assert final["draft_count"] >= final["draft_accepted_count"] > 0, final
    assert "draft_count" not in plain["ollama_raw"]
    assert final["response"] == spec["ollama"].response == plain["ollama_raw"]["response"]
    drafted = sum(s["drafted_tokens"] for s in stats + sampled)
    line = next(x for x in spec["metrics"].splitlines() if x.startswith("herd_worker_tokens_drafted_total{"))
    # /metrics shows the worker's last heartbeat (once a second), which may not count the latest requests yet
    assert 0 < float(line.rsplit(" ", 1)[1]) <= drafted, line


def test_prompt_lookup_units() -> None:
    context = [1, 2, 3, 4, 5, 9, 9, 1, 2, 3]
    assert prompt_lookup(context, 2) == [4, 5]  # "1 2 3" occurred before, followed by 4 5
    # "1 2 3" last occurred before 9 5, but "7 1 2 3" before 8 0: the longest match wins
    assert prompt_lookup([7, 1, 2, 3, 8, 0, 1, 2, 3, 9, 5, 7, 1, 2, 3], 2) == [8, 0]
    assert prompt_lookup([1, 2, 5, 1, 2], 4) == []  # two tokens are too short a match
    assert prompt_lookup([7, 8, 9], 4) == []


def test_ngram_index_answers_as_the_scan_while_the_context_grows() -> None:
    rng = random.Random(5)
    for _ in range(50):
        context = [rng.randrange(6) for _ in range(rng.randrange(1, 12))]  # a small alphabet: many repeats
        index = NgramIndex()
        while len(context) < 120:
            k = rng.randrange(1, 6)
            assert index.draft(context, k) == prompt_lookup(context, k), context
            context += [rng.randrange(6) for _ in range(rng.randrange(1, 4))]  # a step emits 1 to 3 tokens


def test_plan_drafts_what_pays_for_itself() -> None:
    def free(n: int) -> float:
        return 1.0

    def linear(n: int) -> float:
        return float(n)

    def cpu(n: int) -> float:  # a verify token costs a fifth of a one-token step
        return 1.0 + 0.2 * (n - 1)

    assert plan([0.9, 0.5], [8, 3], free, None, 100) == [8, 3]  # extra tokens free: draft all there is
    assert plan([0.9, 0.5], [8, 3], linear, None, 100) == [0, 0]  # each token costs a step: never worth it
    assert plan([0.9, 0.5], [8, 3], free, None, 6) == [4, 0]  # the decode holds at most 6 tokens
    likely, unlikely = plan([0.9, 0.1], [8, 8], cpu, None, 100)
    assert likely >= 3 and unlikely == 0, (likely, unlikely)
    # A draft model whose decodes cost as much as the target's never pays; a cheap one does.
    assert plan([0.9], [8], cpu, lambda m: 1.0 * m, 100) == [0]
    assert plan([0.9], [8], cpu, lambda m: 0.02 * m, 100)[0] >= 3
    assert plan([0.0, 0.9], [0, 8], free, None, 100) == [0, 8]  # no rate or no room: no draft
    assert plan([0.9, 0.5], [8, 1], linear, None, 100, at_least=2) == [2, 1]  # spec_min: drafts even when it costs


def test_acceptance_follows_recent_drafts() -> None:
    a = Acceptance()
    prior = a.rate
    for _ in range(10):
        a.record(4, 4)
    assert a.rate > 0.9
    for _ in range(10):
        a.record(4, 0)
    assert a.rate < 0.45  # below what a draft needs where a verified token costs more than half a step
    low = a.rate
    for _ in range(50):
        a.record(0, 0)  # steps without a draft: back toward the prior, so drafting is tried again
    assert low < a.rate < prior + 1e-9
