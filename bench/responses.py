"""Responses API benchmark (a script, not a test): what /v1/responses adds to the time to first token over
/v1/chat/completions, and how fast a broken stream resumes.

TTFT, paired: one `herd serve` (started here over the Redis at --redis-url, flushed first) gets the same user
message as a streamed chat completion and as a streamed response (store and every other option at its default),
one request at a time, back to back, the order alternating from pair to pair so that neither endpoint always runs
on a freshly woken machine. TTFT is request sent -> first non-empty text (chat: a `delta.content`; responses: a
`response.output_text.delta` event). Each request's message starts with its own number, so no request reuses
another's prompt in the prefix cache. Reported: p50 / p90 of each endpoint and of the per-pair difference
(responses - chat); the issue's target is a p50 difference within 2 ms.

Resume: a background streamed response (`background: true, stream: true`) is read up to its --resume-after'th event,
the connection dropped, and `GET /v1/responses/{id}?stream=true&starting_after=N` sent at once: the time to the
next event (N+1) is the live resume latency (the response is still generating). Once it completed, the same GET
from the same N replays what is stored: the time to its first event and to its last (the whole replay).

This machine has 2 cores shared with other work: the run takes the benchmark lock (bench/common.py) and prints the
CPU other processes used meanwhile; figures taken while that is high are not comparable.

Usage (from the repo root): .venv/bin/python -m bench.responses [--pairs 40] [--resumes 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    HERD_MODEL,
    HERD_REDIS_URL,
    SUBJECTS,
    CpuMeter,
    acquire_run_lock,
    fmt,
    herd_serve,
    percentile,
)


def _message(number: int, subject: str) -> str:
    return f"Request {number:05d}. Write a long, detailed story about {subject}."


async def _ttft_chat(client: httpx.AsyncClient, text: str, max_tokens: int) -> float:
    body = {
        "model": HERD_MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    sent = time.perf_counter()
    first: float | None = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if first is None and line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if any(c["delta"].get("content") for c in chunk.get("choices") or ()):
                    first = time.perf_counter()
    if first is None:
        raise RuntimeError("the chat stream carried no text")
    return first - sent


async def _ttft_responses(client: httpx.AsyncClient, text: str, max_tokens: int) -> float:
    body = {"model": HERD_MODEL, "input": text, "max_output_tokens": max_tokens, "temperature": 0, "stream": True}
    sent = time.perf_counter()
    first: float | None = None
    async with client.stream("POST", "/v1/responses", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if first is None and line.startswith("data: {"):
                event = json.loads(line[6:])
                if event["type"] == "response.output_text.delta" and event["delta"]:
                    first = time.perf_counter()
    if first is None:
        raise RuntimeError("the responses stream carried no text")
    return first - sent


async def measure_ttft(client: httpx.AsyncClient, pairs: int, warmup: int, max_tokens: int) -> dict[str, Any]:
    chat: list[float] = []
    responses: list[float] = []
    diffs: list[float] = []
    for i in range(warmup + pairs):
        subject = SUBJECTS[i % len(SUBJECTS)]
        a, b = _message(2 * i, subject), _message(2 * i + 1, subject)
        if i % 2 == 0:
            c, r = await _ttft_chat(client, a, max_tokens), await _ttft_responses(client, b, max_tokens)
        else:
            r, c = await _ttft_responses(client, a, max_tokens), await _ttft_chat(client, b, max_tokens)
        if i >= warmup:
            chat.append(c * 1000)
            responses.append(r * 1000)
            diffs.append((r - c) * 1000)
    return {"chat_ms": chat, "responses_ms": responses, "diff_ms": diffs}


async def _events(resp: httpx.Response) -> Any:
    async for line in resp.aiter_lines():
        if line.startswith("data: {"):
            yield json.loads(line[6:])


async def measure_resume(client: httpx.AsyncClient, rounds: int, after: int, max_tokens: int) -> dict[str, Any]:
    live: list[float] = []
    replay_first: list[float] = []
    replay_all: list[float] = []
    for i in range(rounds):
        body = {
            "model": HERD_MODEL,
            "input": _message(10_000 + i, SUBJECTS[i % len(SUBJECTS)]),
            "max_output_tokens": max_tokens,
            "temperature": 0,
            "background": True,
            "stream": True,
        }
        response_id, seen = "", -1
        async with client.stream("POST", "/v1/responses", json=body) as resp:
            resp.raise_for_status()
            async for event in _events(resp):
                response_id = response_id or event["response"]["id"]
                seen = event["sequence_number"]
                if seen >= after:
                    break  # the connection drops here; the response goes on generating
        url = f"/v1/responses/{response_id}"
        params = {"stream": "true", "starting_after": str(seen)}
        sent = time.perf_counter()
        expected = seen + 1
        async with client.stream("GET", url, params=params) as resp:
            resp.raise_for_status()
            async for event in _events(resp):  # followed to the terminal event: the response is then complete
                if event["sequence_number"] != expected:
                    raise RuntimeError(f"resumed stream gave event {event['sequence_number']}, expected {expected}")
                if expected == seen + 1:
                    live.append((time.perf_counter() - sent) * 1000)
                expected += 1
        sent = time.perf_counter()
        first: float | None = None
        async with client.stream("GET", url, params=params) as resp:
            resp.raise_for_status()
            async for _ in _events(resp):
                first = first or time.perf_counter()
        replay_all.append((time.perf_counter() - sent) * 1000)
        replay_first.append(((first or time.perf_counter()) - sent) * 1000)
    return {"live_ms": live, "replay_first_ms": replay_first, "replay_all_ms": replay_all}


def _row(name: str, values: list[float]) -> str:
    return f"  {name:<34} p50 {fmt(percentile(values, 50), '7.2f')}  p90 {fmt(percentile(values, 90), '7.2f')}"


async def run(base: str, args: argparse.Namespace) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, timeout=300, trust_env=False) as client:
        ttft = await measure_ttft(client, args.pairs, args.warmup, args.max_tokens)
        resume = await measure_resume(client, args.resumes, args.resume_after, args.resume_tokens)
    return {**ttft, **resume}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--herd", default=str(Path(sys.executable).with_name("herd")))
    parser.add_argument("--redis-url", default=HERD_REDIS_URL)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--resumes", type=int, default=10)
    parser.add_argument("--resume-after", type=int, default=8, help="the sequence number read before dropping")
    parser.add_argument("--resume-tokens", type=int, default=64)
    parser.add_argument("--ready-timeout", type=float, default=180)
    parser.add_argument("--lock-wait", type=float, default=600)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    lock = acquire_run_lock(args.lock_wait)
    log_dir = Path(tempfile.mkdtemp(prefix="herd-bench-responses-"))
    with herd_serve("herd", args.herd, args.redis_url, args.ready_timeout, log_dir) as (proc, base):
        meter = CpuMeter(session=proc.pid, helpers=("redis-server",))
        meter.start()
        figures = asyncio.run(run(base, args))
        other = meter.other_cores()
    lock.close()
    print(f"herd serve, {HERD_MODEL}, {args.pairs} pairs (+{args.warmup} warm-up), max tokens {args.max_tokens}")
    print("time to first token, ms:")
    print(_row("/v1/chat/completions", figures["chat_ms"]))
    print(_row("/v1/responses", figures["responses_ms"]))
    print(_row("per pair, responses - chat", figures["diff_ms"]))
    print(f"resume of a background stream after event {args.resume_after}, {args.resumes} runs, ms:")
    print(_row("live (next event while generating)", figures["live_ms"]))
    print(_row("replay, first event", figures["replay_first_ms"]))
    print(_row("replay, whole stream", figures["replay_all_ms"]))
    print(f"other processes meanwhile: {fmt(other, '.2f')} cores (logs: {log_dir})")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, **figures}, default=str))


if __name__ == "__main__":
    main()
