"""Speculative decoding (HERD_SPECULATE): greedy output with it equals greedy output without it, across concurrent
requests, for prompt lookup and for a draft model; drafted/accepted counts reach usage, Ollama and /metrics.

The draft-model server uses the bundled model as its own draft (the only GGUF with this vocabulary here): that
proves the draft path's bookkeeping (catch-up, per-position drafting, trimming), not a speed-up.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import ollama
import openai
import pytest

from shared.config import bundled_model_path
from tests.conftest import MODEL, HerdServer
from workers.speculate import adapt, prompt_lookup

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
        sampled = chat(client, QUESTIONS[0], temperature=0.8, seed=1)
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    return {"sequential": sequential, "concurrent": concurrent, "sampled": sampled, "metrics": metrics}


MODES = {
    "plain": {},
    "lookup": {"HERD_SPECULATE": f"{MODEL}=lookup"},
    "draft": {"HERD_SPECULATE": f"{MODEL}=draft:{bundled_model_path()}"},
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
                        options={"temperature": 0, "repeat_penalty": 1.0, "num_predict": 32},
                    )
                # The ollama client's models drop fields they do not know: read the extension off the wire.
                body = {
                    "model": MODEL,
                    "prompt": QUESTIONS[0],
                    "stream": False,
                    "options": {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 32},
                }
                done[mode]["ollama_raw"] = httpx.post(f"{srv.base_url}/api/generate", json=body, timeout=900).json()
            finally:
                srv.stop()
        return done[mode]

    return get


def differing(a: list[tuple[str, Any]], b: list[tuple[str, Any]]) -> list[tuple[int, str, str]]:
    return [(i, x, y) for i, ((x, _), (y, _)) in enumerate(zip(a, b, strict=True)) if x != y]


@pytest.mark.parametrize("mode", ["lookup", "draft"])
def test_greedy_output_is_unchanged(results: Callable[[str], dict[str, Any]], mode: str) -> None:
    plain, spec = results("plain"), results(mode)
    for run in ("sequential", "concurrent"):
        assert differing(plain[run], spec[run]) == [], run
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
    assert spec["sampled"][1] is None, "a sampled request does not speculate"
    final = spec["ollama_raw"]
    assert final["draft_count"] >= final["draft_accepted_count"] > 0, final
    assert "draft_count" not in plain["ollama_raw"]
    assert final["response"] == spec["ollama"].response == plain["ollama_raw"]["response"]
    drafted = sum(s["drafted_tokens"] for s in stats)
    line = next(x for x in spec["metrics"].splitlines() if x.startswith("herd_worker_tokens_drafted_total{"))
    # /metrics shows the worker's last heartbeat (once a second), which may not count the latest requests yet
    assert 0 < float(line.rsplit(" ", 1)[1]) <= drafted, line


def test_prompt_lookup_units() -> None:
    context = [1, 2, 3, 4, 5, 9, 9, 2, 3]
    assert prompt_lookup(context, 2) == [4, 5]  # "2 3" occurred before, followed by 4 5
    assert prompt_lookup([*context, 4, 5], 3) == [9, 9, 2]  # the longest match (3 4 5) wins
    assert prompt_lookup([7, 8, 9], 4) == []
    assert adapt(4, 4, 4, 8) == 6 and adapt(7, 4, 4, 8) == 8
    assert adapt(4, 4, 1, 8) == 3 and adapt(1, 1, 0, 8) == 1 and adapt(5, 0, 0, 8) == 5
