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


def test_the_next_turn_reuses_the_earlier_prompt_and_reply(server: HerdServer) -> None:
    # Turn 2 reuses all of turn 1's prompt and its reply's cells (decoded alone, within 256 cells: the kernel a
    # short prefill chunk takes), so it computes only the reply's last token and its own message; the same turn
    # after unrelated requests took every slot gives the same greedy text. No system message: the template's default
    # one (SmolLM2's) is in both.
    turn1 = [{"role": "user", "content": "Name a colour of the rainbow."}]
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0) as client:
        first = client.chat.completions.create(model=MODEL, messages=turn1, max_tokens=8, temperature=0)  # type: ignore[arg-type]
        assert first.usage is not None
        reply = first.choices[0].message.content or ""
        turn2 = [*turn1, {"role": "assistant", "content": reply}, {"role": "user", "content": "And another?"}]
        second = client.chat.completions.create(model=MODEL, messages=turn2, max_tokens=8, temperature=0)  # type: ignore[arg-type]
        with ThreadPoolExecutor(8) as pool:
            fill = pool.map(
                lambda i: client.completions.create(model=MODEL, prompt=f"{i} plums", max_tokens=4), range(8)
            )
            assert all(c.usage is not None for c in fill)  # iterating raises what a request raised
        cold = client.chat.completions.create(model=MODEL, messages=turn2, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    assert cold.usage is not None and cold.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    assert first.usage.prompt_tokens < cached < second.usage.prompt_tokens, (first.usage, second.usage)
    assert (cold.usage.prompt_tokens_details.cached_tokens or 0) < first.usage.prompt_tokens
    assert cold.choices[0].message.content == second.choices[0].message.content


def test_a_reply_decoded_beside_others_is_reused_and_the_next_turn_is_unchanged(server: HerdServer) -> None:
    # Eight conversations at once fill the eight slots, so their replies are decoded beside each other and those
    # cells count for the next turn (a reply decoded alone does not: workers/slots.py). Each next turn is then sent
    # alone, warm, and again cold after unrelated requests took every slot: the same greedy text.
    no_end = {"0": -100, "2": -100}  # SmolLM2's end tokens: every reply is 10 tokens
    turn1 = [[{"role": "user", "content": f"Person {i}: name a fruit."}] for i in range(8)]

    def reply(client: openai.OpenAI, messages: list[dict[str, str]]) -> tuple[str, int, int]:
        resp = client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=10,
            temperature=0,
            logit_bias=no_end,  # type: ignore[arg-type]
        )
        assert resp.usage is not None and resp.usage.prompt_tokens_details is not None
        cached = resp.usage.prompt_tokens_details.cached_tokens or 0
        return resp.choices[0].message.content or "", resp.usage.prompt_tokens, cached

    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0) as client:
        with ThreadPoolExecutor(8) as pool:
            firsts = list(pool.map(lambda m: reply(client, m), turn1))
        turn2 = [
            [*m, {"role": "assistant", "content": text}, {"role": "user", "content": "And its colour?"}]
            for m, (text, _, _) in zip(turn1, firsts, strict=True)
        ]
        warm = [reply(client, m) for m in turn2]
        with ThreadPoolExecutor(8) as pool:
            pool.map(lambda i: client.completions.create(model=MODEL, prompt=f"{i} pears", max_tokens=4), range(8))
        cold = [reply(client, m) for m in turn2]
    beyond = [cached - first_prompt for (_, first_prompt, _), (_, _, cached) in zip(firsts, warm, strict=True)]
    assert all(n >= 0 for n in beyond), beyond  # every warm turn reuses all of its first prompt ...
    assert sum(n > 0 for n in beyond) >= 4, beyond  # ... and most of them some of their reply too
    # Cold: at most what the conversations share (the template's default system prompt and "Person "), left by the
    # turn sent just before.
    assert all(cached < first_prompt - 4 for (_, _, cached), (_, first_prompt, _) in zip(cold, firsts, strict=True))
    assert [text for text, _, _ in warm] == [text for text, _, _ in cold]
