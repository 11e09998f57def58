"""The follow-up row of bench/scaleout.py (`--followup N`): does a conversation's next turn land on the worker that
holds its prefix, and what does it cost when it does?

On a fleet of real `herd worker` processes (the bundled SmolLM2, HERD_N_THREADS=--threads), N conversations run one
after another: a long first turn (a distinct text of 600 words, and a question about it), then a
follow-up turn (the first turn's messages, its reply and a new question), both streamed with temperature 0. Which
worker served each turn is read from herd:stats:<request id> (the worker writes it: per-request truth); the
follow-up's TTFT is the time to its first content chunk. One conversation at a time keeps a free slot on every
worker, which is the case the issue's target is about. herd_dispatches_total{affinity} from /metrics, before and
after, is reported beside the count.

Run it for `--workers 1 3`: the 1-worker row is the baseline (there every follow-up is a hit on the only worker), and
the ratio of the 3-worker fleet's follow-up TTFT p50 to it is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import redis
from herd import channels

_VOCABULARY = (
    "river stone market winter garden letter engine harbor candle forest window signal copper thunder meadow "
    "ladder violin orchard compass lantern bridge feather silver canyon pepper glacier anchor mirror velvet "
    "tunnel cactus marble falcon pocket saddle ribbon walnut hammer island jacket kettle lemon magnet needle "
    "oyster pillow quartz rocket shadow timber umbrella valley wagon yellow zipper basket castle dragon "
    "elbow fabric goblet hollow insect jungle kitten ledger mango nickel olive parrot quiver raisin spider "
    "teapot uncle vessel whistle yogurt acorn blanket cliff desert ember fountain gravel hazel iron jewel"
)
WORDS = _VOCABULARY.split()
QUESTION = "Which three words of the text above come first? Answer briefly."
FOLLOW_UP = "And which word comes last? Answer in one word."


def long_text(conversation: int, words: int = 600) -> str:
    """A text of its own for each conversation (no two share a prefix longer than a few characters); 600 words are
    about 800-900 SmolLM2 tokens."""
    rng = random.Random(f"herd-followup-{conversation}")
    body = " ".join(rng.choice(WORDS) for _ in range(words))
    return f"Notes #{conversation} ({rng.random():.6f}): {body}."


async def turn(http: httpx.AsyncClient, model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    """One streamed chat turn: its request id, reply text and time to the first content chunk (s)."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    started = time.perf_counter()
    ttft, parts = float("nan"), []
    async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        rid = resp.headers["x-request-id"]
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                content = choice.get("delta", {}).get("content")
                if content:
                    if not parts:
                        ttft = time.perf_counter() - started
                    parts.append(content)
    return {"id": rid, "reply": "".join(parts), "ttft_s": ttft}


def served_by(client: redis.Redis, rid: str) -> tuple[str, int]:
    """The worker that ran a request and its prompt tokens, from the stats it stored (written just after the last
    event: wait a little)."""
    for _ in range(50):
        raw = client.get(channels.stats(rid))
        if raw:
            stats = json.loads(raw)
            return str(stats["worker_id"]), int(stats["prompt_tokens"])
        time.sleep(0.1)
    return "?", 0


def dispatches(base: str) -> Counter[str]:
    """herd_dispatches_total by its affinity label (summed over models)."""
    found: Counter[str] = Counter()
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        match = re.match(r'herd_dispatches_total\{[^}]*affinity="(\w+)"[^}]*\} ([0-9.e+]+)', line)
        if match:
            found[match.group(1)] += int(float(match.group(2)))
    return found


async def conversations(base: str, client: redis.Redis, model: str, n: int, max_tokens: int) -> list[dict[str, Any]]:
    rows = []
    async with httpx.AsyncClient(base_url=base, timeout=600) as http:
        for i in range(n):
            messages = [{"role": "user", "content": f"{long_text(i)}\n\n{QUESTION}"}]
            first = await turn(http, model, messages, max_tokens)
            messages += [{"role": "assistant", "content": first["reply"]}, {"role": "user", "content": FOLLOW_UP}]
            second = await turn(http, model, messages, max_tokens)
            (first_worker, first_tokens), (follow_up_worker, follow_up_tokens) = (
                served_by(client, first["id"]),
                served_by(client, second["id"]),
            )
            rows.append(
                {
                    "first_worker": first_worker,
                    "follow_up_worker": follow_up_worker,
                    "first_prompt_tokens": first_tokens,
                    "follow_up_prompt_tokens": follow_up_tokens,
                    "first_ttft_s": first["ttft_s"],
                    "follow_up_ttft_s": second["ttft_s"],
                }
            )
    return rows


def measure(fleet: Any, n: int, redis_port: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One fleet of `n` real workers (started by bench.scaleout.start_fleet) and --followup conversations on it."""
    from bench.scaleout import MODEL, percentile, start_fleet

    client = redis.Redis(port=redis_port)
    try:
        _, base = start_fleet(fleet, n, redis_port, args, workdir)
        before = dispatches(base)
        rows = asyncio.run(conversations(base, client, MODEL, args.followup, args.followup_tokens))
        metric = dispatches(base) - before
    finally:
        client.close()
    hits = sum(r["first_worker"] == r["follow_up_worker"] != "?" for r in rows)
    follow_ups = sorted(r["follow_up_ttft_s"] * 1000 for r in rows)
    firsts = sorted(r["first_ttft_s"] * 1000 for r in rows)
    return {
        "workers": n,
        "conversations": len(rows),
        "follow_up_on_first_worker": hits,
        "hit_rate": round(hits / max(len(rows), 1), 3),
        "first_turn_spread": sorted(Counter(r["first_worker"] for r in rows).values(), reverse=True),
        "dispatches_by_affinity": dict(metric),  # both turns: a first turn counts as none
        "first_prompt_tokens": sorted(r["first_prompt_tokens"] for r in rows),
        "first_ttft_ms_p50": round(percentile(firsts, 0.5), 1),
        "follow_up_ttft_ms_p50": round(percentile(follow_ups, 0.5), 1),
        "follow_up_ttft_ms_max": round(max(follow_ups, default=float("nan")), 1),
        "turns": rows,
    }


def report(rows: list[dict[str, Any]]) -> None:
    single = next((r for r in rows if r["workers"] == 1), None)
    for row in rows:
        ratio = ""
        if single is not None and row is not single:
            ratio = f", {row['follow_up_ttft_ms_p50'] / single['follow_up_ttft_ms_p50']:.2f}x the 1-worker p50"
        print(
            f"{row['workers']} worker(s), {row['conversations']} conversations: follow-up on the first turn's worker "
            f"{row['follow_up_on_first_worker']}/{row['conversations']} ({row['hit_rate']:.0%}); first turns spread "
            f"{row['first_turn_spread']}; first prompts {min(row['first_prompt_tokens'], default=0)}-"
            f"{max(row['first_prompt_tokens'], default=0)} tokens; herd_dispatches_total{{affinity}} "
            f"{row['dispatches_by_affinity']}; TTFT p50 first turn {row['first_ttft_ms_p50']} ms, "
            f"follow-up {row['follow_up_ttft_ms_p50']} ms{ratio}",
            flush=True,
        )
