"""The official openai SDK (sync and async, stream and not) against a real `herd serve` with the real model."""

from __future__ import annotations

from collections.abc import Iterator

import jinja2
import llama_cpp
import openai
import pytest

from tests.conftest import MODEL, HerdServer

PROMPT = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def vocab(model_path: str) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def sdk(server: HerdServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def expected_chat_prompt_tokens(vocab: llama_cpp.Llama, messages: list[dict[str, str]]) -> int:
    """Count independently of herd: the GGUF's own template rendered with plain jinja2, then llama.cpp's tokenizer."""
    template = vocab.metadata["tokenizer.chat_template"]
    text = (
        jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        .from_string(template)
        .render(messages=messages, add_generation_prompt=True)
    )
    return len(vocab.tokenize(text.encode(), add_bos=False, special=True))


def test_chat_non_stream(server: HerdServer, sdk: openai.OpenAI, vocab: llama_cpp.Llama) -> None:
    resp = sdk.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=12, temperature=0)  # type: ignore[arg-type]
    choice = resp.choices[0]
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == expected_chat_prompt_tokens(vocab, PROMPT)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    if choice.finish_reason == "length":
        assert resp.usage.completion_tokens == 12


def test_chat_stream_matches_non_stream(server: HerdServer, sdk: openai.OpenAI) -> None:
    c = sdk
    whole = c.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=20, temperature=0)  # type: ignore[arg-type]
    stream = c.chat.completions.create(
        model=MODEL,
        messages=PROMPT,  # type: ignore[arg-type]
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    roles = [ch.choices[0].delta.role for ch in chunks if ch.choices and ch.choices[0].delta.role]
    assert roles == ["assistant"], "role only in the first delta"
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    usage_chunks = [ch for ch in chunks if ch.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == [] and chunks[-1] is usage_chunks[0]
    streamed_usage, whole_usage = usage_chunks[0].usage, whole.usage
    assert streamed_usage is not None and whole_usage is not None
    assert streamed_usage.prompt_tokens == whole_usage.prompt_tokens
    assert streamed_usage.completion_tokens == whole_usage.completion_tokens
    assert streamed_usage.total_tokens == whole_usage.total_tokens
    assert len({ch.id for ch in chunks}) == 1


def test_stream_without_include_usage_sends_no_usage(server: HerdServer, sdk: openai.OpenAI) -> None:
    chunks = list(
        sdk.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=5, stream=True)  # type: ignore[arg-type]
    )
    assert all(ch.usage is None for ch in chunks)
    assert chunks[-1].choices[0].finish_reason is not None


def test_stop_string_is_honoured(server: HerdServer, sdk: openai.OpenAI) -> None:
    c = sdk
    free = c.completions.create(model=MODEL, prompt="1, 2, 3, 4, 5, 6,", max_tokens=16, temperature=0)
    text = free.choices[0].text
    assert " 8" in text, text  # the model counts on; the stop string below cuts it
    cut = c.completions.create(model=MODEL, prompt="1, 2, 3, 4, 5, 6,", max_tokens=16, temperature=0, stop=[" 8"])
    assert cut.choices[0].text == text[: text.index(" 8")]
    assert cut.choices[0].finish_reason == "stop"
    streamed = c.completions.create(
        model=MODEL, prompt="1, 2, 3, 4, 5, 6,", max_tokens=16, temperature=0, stop=" 8", stream=True
    )
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == cut.choices[0].text


def test_completions_usage_counts_real_tokens(server: HerdServer, sdk: openai.OpenAI, vocab: llama_cpp.Llama) -> None:
    prompt = "The capital of France is"
    resp = sdk.completions.create(model=MODEL, prompt=prompt, max_tokens=7, temperature=0)
    assert resp.object == "text_completion"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == len(vocab.tokenize(prompt.encode(), add_bos=True, special=True))
    if resp.choices[0].finish_reason == "length":
        assert resp.usage.completion_tokens == 7
    assert resp.usage.completion_tokens >= 1


def test_completions_list_prompt_gives_one_choice_each(server: HerdServer, sdk: openai.OpenAI) -> None:
    c = sdk
    prompts = ["Once upon a time", "The weather today is"]
    resp = c.completions.create(model=MODEL, prompt=prompts, max_tokens=6, temperature=0)
    assert [ch.index for ch in resp.choices] == [0, 1]
    alone = [c.completions.create(model=MODEL, prompt=p, max_tokens=6, temperature=0).choices[0].text for p in prompts]
    assert [ch.text for ch in resp.choices] == alone
    streamed: dict[int, str] = {0: "", 1: ""}
    for chunk in c.completions.create(model=MODEL, prompt=prompts, max_tokens=6, temperature=0, stream=True):
        for ch in chunk.choices:
            streamed[ch.index] += ch.text
    assert [streamed[0], streamed[1]] == alone


def test_seed_reproducible_at_temperature(server: HerdServer, sdk: openai.OpenAI) -> None:
    c = sdk
    kwargs = {"model": MODEL, "messages": PROMPT, "max_tokens": 16, "temperature": 1.0, "seed": 1234}
    first = c.chat.completions.create(**kwargs).choices[0].message.content  # type: ignore[call-overload]
    second = c.chat.completions.create(**kwargs).choices[0].message.content  # type: ignore[call-overload]
    assert first == second


async def test_async_client_stream_and_not(server: HerdServer, sdk: openai.OpenAI) -> None:
    async with openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as ac:
        whole = await ac.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=10, temperature=0)  # type: ignore[arg-type]
        stream = await ac.chat.completions.create(
            model=MODEL,
            messages=PROMPT,  # type: ignore[arg-type]
            max_tokens=10,
            temperature=0,
            stream=True,
        )
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
    assert text == whole.choices[0].message.content


def test_models_list_and_get(server: HerdServer, sdk: openai.OpenAI) -> None:
    c = sdk
    assert MODEL in [m.id for m in c.models.list()]
    assert c.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("no-such-model")


def test_request_id_header(server: HerdServer, sdk: openai.OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=PROMPT, max_tokens=2)  # type: ignore[arg-type]
    assert raw.headers.get("x-request-id")
