"""Reasoning end to end with the real SmolLM2 model and real clients: a copy of the bundled GGUF whose chat template
opens `<think>` in the generation prompt (as DeepSeek R1's do) is created through Ollama's /api/create; what the
model writes then is reasoning: `reasoning_content` (openai SDK, chat), a reasoning item (Responses, validated
strictly against the SDK's types), `thinking` (ollama client, think=True); think=False drops it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ollama
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.conftest import MODEL, HerdServer
from tests.thinker import THINKER, thinker_server

ASK = [{"role": "user", "content": "What is the capital of France?"}]
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(scope="module")
def srv(redis_port: int, model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdServer]:
    server = thinker_server(redis_port, 15, model_path, tmp_path_factory.mktemp("reasoning"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oai(srv: HerdServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key="unused", timeout=300) as client:
        yield client


@pytest.fixture(scope="module")
def client(srv: HerdServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=srv.base_url, timeout=300) as c:
        yield c


def test_chat_completion_gives_reasoning_content(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(model=THINKER, messages=ASK, max_tokens=12, temperature=0)  # type: ignore[arg-type]
    ChatCompletion.model_validate(reply.model_dump(mode="json", exclude_unset=True), strict=True)
    message = reply.choices[0].message
    thought = (message.model_extra or {}).get("reasoning_content")
    assert isinstance(thought, str) and thought.strip()
    assert "<think>" not in thought and "</think>" not in thought
    # SmolLM2 never closes the block: everything it wrote was reasoning, nothing was the answer.
    assert message.content == ""
    assert reply.usage is not None and reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens == reply.usage.completion_tokens

    stream = oai.chat.completions.create(
        model=THINKER,
        messages=ASK,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, content = [], []
    for chunk in stream:
        ChatCompletionChunk.model_validate(chunk.model_dump(mode="json", exclude_unset=True), strict=True)
        if chunk.choices:
            delta = chunk.choices[0].delta
            parts.append((delta.model_extra or {}).get("reasoning_content") or "")
            content.append(delta.content or "")
    assert "".join(parts) == thought  # the same greedy generation, split the same way
    assert "".join(content) == ""


def test_responses_reasoning_item_before_the_answer(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model=THINKER, input="What is the capital of France?", max_output_tokens=12)
    strict = Response.model_validate(response.model_dump(mode="json", by_alias=True, exclude_unset=True), strict=True)
    item = strict.output[0]
    assert item.type == "reasoning"
    assert item.content is not None and item.content[0].type == "reasoning_text" and item.content[0].text.strip()
    assert strict.usage is not None and strict.usage.output_tokens_details.reasoning_tokens > 0

    events = list(oai.responses.create(model=THINKER, input="Hi", max_output_tokens=8, stream=True))
    for event in events:
        EVENTS.validate_python(event.model_dump(mode="json", by_alias=True, exclude_unset=True), strict=True)
    kinds = [e.type for e in events]
    assert "response.reasoning_text.delta" in kinds
    deltas = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    done = next(e for e in events if e.type == "response.reasoning_text.done")
    assert done.text == deltas
    added = next(e for e in events if e.type == "response.output_item.added")
    assert added.item.type == "reasoning"
    final = events[-1]
    assert final.type in ("response.completed", "response.incomplete")
    assert final.response.output[0].type == "reasoning"


def test_ollama_think(client: ollama.Client) -> None:
    assert "thinking" in (client.show(THINKER).capabilities or [])
    options = {"temperature": 0, "num_predict": 10}
    reply = client.chat(model=THINKER, messages=ASK, think=True, options=options)
    assert reply.message.thinking and reply.message.thinking.strip()
    assert reply.message.content == ""
    lines = list(client.chat(model=THINKER, messages=ASK, think=True, options=options, stream=True))
    assert "".join(line.message.thinking or "" for line in lines) == reply.message.thinking
    generated = client.generate(model=THINKER, prompt="What is the capital of France?", think="low", options=options)
    assert generated.thinking and generated.thinking.strip()
    dropped = client.chat(model=THINKER, messages=ASK, think=False, options=options)
    assert not dropped.message.thinking


def test_the_bundled_model_still_does_not_think(client: ollama.Client, oai: openai.OpenAI) -> None:
    assert "thinking" not in (client.show(MODEL).capabilities or [])
    with pytest.raises(ollama.ResponseError, match="does not support thinking"):
        client.chat(model=MODEL, messages=ASK, think=True)
    reply = oai.chat.completions.create(model=MODEL, messages=ASK, max_tokens=6, temperature=0)  # type: ignore[arg-type]
    assert reply.choices[0].message.content and "reasoning_content" not in (reply.choices[0].message.model_extra or {})
