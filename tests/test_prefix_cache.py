"""The prompt cache: a second request that shares a long prefix reuses its KV cells, and greedy output is unchanged."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai

from tests.conftest import MODEL, HerdServer

SYSTEM = "You are a meticulous assistant for a library. " + " ".join(
    f"Rule {i}: answer politely, cite the shelf number, and never invent a book title." for i in range(40)
)


def ask(client: openai.OpenAI, question: str) -> tuple[str, int, int]:
    resp = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        max_tokens=24,
        temperature=0,
    )
    assert resp.usage is not None and resp.usage.prompt_tokens_details is not None
    cached = resp.usage.prompt_tokens_details.cached_tokens or 0
    return resp.choices[0].message.content or "", resp.usage.prompt_tokens, cached


def test_shared_system_prompt_is_reused_and_output_is_unchanged(server: HerdServer) -> None:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0) as client:
        # A different question first, so the cache holds the system prompt but not this exact prompt.
        ask(client, "Where are the atlases?")
        text, prompt_tokens, cached = ask(client, "Where are the cookbooks?")
        assert prompt_tokens > 800
        # The whole system message, where the user's message begins (prefill chunks end at every message).
        assert prompt_tokens - 20 <= cached <= prompt_tokens - 8, (cached, prompt_tokens)
        # Eight unrelated requests at once take all eight slots, the system prompt's too: the next run is cold.
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(lambda i: client.completions.create(model=MODEL, prompt=f"{i} apples", max_tokens=8), range(8))
            )
        cold_text, _, cold_cached = ask(client, "Where are the cookbooks?")
        assert cold_cached < 20, cold_cached
        assert cold_text == text


def test_the_next_turn_reuses_the_whole_earlier_prompt(server: HerdServer) -> None:
    # Chunks end after each message's header, so turn 1's prompt, which ends with the generation prompt
    # (<|im_start|>assistant\n), ends on a cut turn 2's prompt has too: all of it is reused (not its reply, whose
    # cells came one token at a time). No system message: the template's default one (SmolLM2's) is in both.
    turn1 = [{"role": "user", "content": "Name a colour of the rainbow."}]
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0) as client:
        first = client.chat.completions.create(model=MODEL, messages=turn1, max_tokens=8, temperature=0)  # type: ignore[arg-type]
        assert first.usage is not None
        reply = first.choices[0].message.content or ""
        turn2 = [*turn1, {"role": "assistant", "content": reply}, {"role": "user", "content": "And another?"}]
        second = client.chat.completions.create(model=MODEL, messages=turn2, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens
