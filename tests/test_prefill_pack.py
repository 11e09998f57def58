"""HERD_PREFILL_PACK with the real model: prompts prefilled together in shared decode calls, alongside running
streams, keep their own KV cells (each continues its own text, a long prompt across several calls included), and
a prompt's reply is the same among others as alone.

The default mode's stronger promise (exactly the same output alone or batched, by construction) is
tests/test_batching.py's; the packed mode keeps it only as far as llama.cpp's arithmetic happens to agree.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import openai
import pytest

from tests.conftest import MODEL, HerdServer

# Counting prompts: the model's next numbers are certain, and another prompt's cells or wrong positions would show.
RANGES = [(1, 12), (40, 55), (1, 220), (300, 310), (7, 20), (90, 130)]  # (1, 220) is ~1,000 tokens: 2+ calls


def prompt(first: int, last: int) -> str:
    return ", ".join(str(i) for i in range(first, last + 1)) + ","


@pytest.fixture(scope="module")
def packed(redis_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdServer]:
    srv = HerdServer(redis_port, db=13, log_path=tmp_path_factory.mktemp("pack") / "serve.log", HERD_PREFILL_PACK="1")
    yield srv
    srv.stop()


async def complete(client: openai.AsyncOpenAI, text: str) -> tuple[str, int]:
    resp = await client.completions.create(model=MODEL, prompt=text, max_tokens=10, temperature=0)
    assert resp.usage is not None
    return resp.choices[0].text, resp.usage.completion_tokens


async def test_packed_prompts_continue_their_own_text_alone_or_together(packed: HerdServer) -> None:
    async with openai.AsyncOpenAI(base_url=f"{packed.base_url}/v1", api_key="x", max_retries=0) as client:
        together = await asyncio.gather(*(complete(client, prompt(a, b)) for a, b in RANGES))
        alone = [await complete(client, prompt(a, b)) for a, b in RANGES]
    for (first, last), (text, tokens) in zip(RANGES, together, strict=True):
        assert text.startswith(f" {last + 1}, {last + 2}"), (first, last, text)
        assert tokens == 10
    assert alone == together
