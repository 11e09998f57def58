"""Issue 20's prompt-side rows for bench/rows.py, over chat completions (the model's own template on both systems):

chat1      short chat, one stream at a time, ``max_tokens`` 1, five different questions with no system message (so
           SmolLM2's template adds its default system prompt, which a server may keep cached); TTFT p50.
rag        8 concurrent distinct ~1,000-token documents, each with a question, 32 tokens out; aggregate tok/s.
repeat     the same 8 documents sent again at once (the prefix cache under concurrency); TTFT p50, aggregate tok/s
           and the cached prompt tokens the servers reported.
multiturn  8 users x 5 turns each, every user's turns one after another (the history grows by the reply and a new
           question), the users at once; TTFT per turn p50 and p99.

End-of-generation tokens are banned (logit_bias -100) so both systems write the same number of tokens; temperature
0. llama-server keeps its default prompt cache (``cache_prompt``), herd its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import httpx

from bench import common as C

QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colours.",
    "How many legs does a spider have?",
    "What is the boiling point of water?",
    "Who wrote Hamlet?",
)
NO_EOS = {"0": -100, "2": -100}  # SmolLM2's <|endoftext|> and <|im_end|>
PROMPT_ROWS = ("chat1", "rag", "repeat", "multiturn")


async def stream_chat(client: httpx.AsyncClient, url: str, body: dict[str, Any], timeout_s: float) -> C.StreamResult:
    """POST one streaming /v1/chat/completions request and time its SSE chunks (text: delta.content), from the
    first send. A keep-alive connection the server closed before the request reached it (llama-server closes them
    after a number of requests; httpx may send on one before it sees the close: "Server disconnected without
    sending a response") is sent again once on a new connection: the server never saw it, and a user's turn that
    fails there would end the conversation and lighten the load on the turns left."""
    t_send = time.perf_counter()
    result = await _stream_chat(client, url, body, timeout_s, t_send)
    if result.error is not None and result.error.startswith("RemoteProtocolError: Server disconnected without"):
        result = await _stream_chat(client, url, body, timeout_s, t_send)
    return result


async def _stream_chat(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], timeout_s: float, t_send: float
) -> C.StreamResult:
    result = C.StreamResult(ok=False)
    t_first: float | None = None
    t_last = t_send
    pieces: list[str] = []
    try:
        async with asyncio.timeout(timeout_s), client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                result.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return result
            async for line in resp.aiter_lines():
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    continue
                chunk = json.loads(line[5:])
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    result.usage_tokens = int(usage["completion_tokens"])
                    result.cached_tokens = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        now = time.perf_counter()
                        if t_first is not None:
                            result.gaps_s.append(now - t_last)
                        t_last = now
                        t_first = t_first or t_last
                        pieces.append(text)
                        result.text_chunks += 1
    except (TimeoutError, httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
        return result
    result.total_s = time.perf_counter() - t_send
    result.tokens = result.usage_tokens if result.usage_tokens is not None else result.text_chunks
    if t_first is not None:
        result.ttft_s, result.decode_s = t_first - t_send, t_last - t_first
    result.ok = t_first is not None
    result.usage = {"text": "".join(pieces)}
    return result


def chat_body(model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "logit_bias": NO_EOS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def document(i: int) -> str:
    from bench.rows import system_prompt  # a ~1,000-token rulebook, different for every i

    return f"Read this document.\n\n{system_prompt(100 + i)}\n\nQuestion: what is rule 7 of this rulebook?"


def _ttfts(streams: list[C.StreamResult]) -> list[float]:
    return [s.ttft_s * 1000 for s in streams if s.ok and s.ttft_s is not None]


async def burst(url: str, bodies: list[dict[str, Any]], timeout_s: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=len(bodies) + 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits, trust_env=False) as client:
        t0 = time.perf_counter()
        streams = await asyncio.gather(*(stream_chat(client, url, b, timeout_s) for b in bodies))
        wall = time.perf_counter() - t0
    ok = [s for s in streams if s.ok]
    return {
        "errors": len(streams) - len(ok),
        "ttft_p50_ms": C.percentile(_ttfts(ok), 50),
        "aggregate_tps": sum(s.tokens for s in ok) / wall,
        # how long a stream that already writes waits between tokens while the others' prompts are prefilled
        "itl_p99_ms": C.percentile([gap * 1000 for s in ok for gap in s.gaps_s], 99),
        "cached_tokens": sum(s.cached_tokens for s in ok),
    }


async def _conversation(
    client: httpx.AsyncClient, url: str, model: str, user: int, turns: int, timeout_s: float
) -> tuple[list[float], str | None]:
    """One user's turns; a failed turn ends the conversation (the next turn needs its reply) and is reported,
    without discarding the turns measured before it or the other users'."""
    history: list[dict[str, str]] = []
    ttfts: list[float] = []
    for turn in range(turns):
        history.append({"role": "user", "content": f"User {user}, turn {turn}: {QUESTIONS[(user + turn) % 5]}"})
        stream = await stream_chat(client, url, chat_body(model, history, 16), timeout_s)
        if not stream.ok:
            return ttfts, f"user {user} turn {turn}: {stream.error}"
        ttfts.extend(_ttfts([stream]))
        history.append({"role": "assistant", "content": str(stream.usage["text"])})
    return ttfts, None


async def multiturn(url: str, model: str, users: int, turns: int, timeout_s: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=users + 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits, trust_env=False) as client:
        per_user = await asyncio.gather(*(_conversation(client, url, model, u, turns, timeout_s) for u in range(users)))
    ttfts = [t for user, _ in per_user for t in user]
    failed = [error for _, error in per_user if error is not None]
    for error in failed:
        print(f"  multiturn: {error}", flush=True)
    return {
        "turns": len(ttfts),
        "errors": len(failed),
        "ttft_p50_ms": C.percentile(ttfts, 50),
        "ttft_p99_ms": C.percentile(ttfts, 99),
    }


async def _measure(base: str, model: str, rows: set[str], args: argparse.Namespace) -> dict[str, Any]:
    url = f"{base}/v1/chat/completions"
    res: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout), trust_env=False) as client:
        warm = await stream_chat(client, url, chat_body(model, [{"role": "user", "content": "Hello!"}], 1), 120)
        if not warm.ok:
            raise RuntimeError(f"chat warm-up failed: {warm.error}")
        if "chat1" in rows:
            streams = [
                await stream_chat(client, url, chat_body(model, [{"role": "user", "content": q}], 1), 120)
                for q in QUESTIONS
            ]
            res["chat1"] = {"errors": sum(not s.ok for s in streams), "ttft_p50_ms": C.percentile(_ttfts(streams), 50)}
    docs = [chat_body(model, [{"role": "user", "content": document(i)}], 32) for i in range(args.rag)]
    if "rag" in rows or "repeat" in rows:
        res["rag"] = await burst(url, docs, args.timeout)
    if "repeat" in rows:
        res["repeat"] = await burst(url, docs, args.timeout)
    if "multiturn" in rows:
        res["multiturn"] = await multiturn(url, model, args.users, args.turns, args.timeout)
    return res


def measure(base: str, model: str, rows: set[str], args: argparse.Namespace) -> dict[str, Any]:
    """The prompt rows named in `rows` against the server at `base` (its chat endpoint serving `model`)."""
    return asyncio.run(_measure(base, model, rows & set(PROMPT_ROWS), args)) if rows & set(PROMPT_ROWS) else {}


def report_lines(get: Any) -> list[tuple[str, float | None, str]]:
    """(label, value, target) lines comparing herd (and `herd pack`, HERD_PREFILL_PACK=1, when it ran) with
    llama-server -np 8, and herd pack with herd; `get(system, row, key)`."""
    llama = "llama-server -np 8"
    rows = [
        ("chat1", "ttft_p50_ms", "TTFT p50", "<= 1"),
        ("rag", "aggregate_tps", "aggr tok/s", ">= 1"),
        ("repeat", "ttft_p50_ms", "TTFT p50", "<= 1"),
        ("repeat", "aggregate_tps", "aggr tok/s", ">= 1"),
        ("multiturn", "ttft_p50_ms", "TTFT p50", "<= 1"),
        ("multiturn", "ttft_p99_ms", "TTFT p99", "<= 1"),
    ]
    lines = [
        (f"{row}: herd {label} / llama-server", C.ratio(get("herd", row, key), get(llama, row, key)), target)
        for row, key, label, target in rows
    ]
    if any(get("herd pack", row, key) is not None for row, key, _, _ in rows):
        for row, key, label, target in rows:
            lines.append(
                (
                    f"{row}: herd pack {label} / llama-server",
                    C.ratio(get("herd pack", row, key), get(llama, row, key)),
                    target,
                )
            )
        for row, key, label, _ in rows:
            lines.append(
                (f"{row}: herd pack {label} / herd", C.ratio(get("herd pack", row, key), get("herd", row, key)), "")
            )
    return lines
