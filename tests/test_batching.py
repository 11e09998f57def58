"""Continuous batching is invisible: concurrent greedy requests give exactly what each gives alone."""

from __future__ import annotations

import asyncio

import openai

from tests.conftest import MODEL, HerdServer

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three fruits.",
    "Explain gravity in one sentence.",
    "What is 12 times 12?",
    "Name a famous painter.",
    "Say hello in Spanish.",
    "Describe a cat.",
    # A prompt of several prefill chunks: it is prefilled while the others decode, and must not notice.
    "Summarise this text in one line: "
    + " ".join(f"Sentence {i} says the river rose by {i} centimetres." for i in range(30)),
]


async def ask(client: openai.AsyncOpenAI, question: str, stream: bool) -> str:
    messages = [{"role": "user", "content": question}]
    if not stream:
        resp = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=48, temperature=0)  # type: ignore[arg-type]
        return resp.choices[0].message.content or ""
    chunks = await client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=48,
        temperature=0,
        stream=True,
    )
    return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])


async def test_eight_concurrent_greedy_requests_match_each_alone(server: HerdServer) -> None:
    async with openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0) as client:
        alone = [await ask(client, q, stream=False) for q in QUESTIONS]
        together = await asyncio.gather(*(ask(client, q, stream=i % 2 == 0) for i, q in enumerate(QUESTIONS)))
    assert all(alone)
    assert list(together) == alone
