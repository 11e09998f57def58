"""Ollama's format (JSON and JSON schema), tools and logprobs through the real ollama client (and raw NDJSON)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import ollama
import pydantic
import pytest

from tests.conftest import MODEL, HerdServer

GREEDY: dict[str, Any] = {"temperature": 0, "num_predict": 120}
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(server: HerdServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=server.base_url, timeout=600) as c:
        yield c


class Cat(pydantic.BaseModel):
    name: Annotated[str, pydantic.Field(max_length=24)]
    color: Annotated[str, pydantic.Field(max_length=24)]


def test_format_schema_fits_the_model(client: ollama.Client) -> None:
    resp = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a cat as JSON."}],
        format=Cat.model_json_schema(),
        options=GREEDY,
    )
    assert resp.done_reason == "stop"
    assert Cat.model_validate_json(resp.message.content or "")


def test_format_json_is_a_json_object(client: ollama.Client) -> None:
    resp = client.generate(
        model=MODEL, prompt='A JSON object with the keys "name" and "color" for a cat.', format="json", options=GREEDY
    )
    assert resp.done_reason == "stop"
    assert isinstance(json.loads(resp.response), dict)


def _forced(server: HerdServer, stream: bool) -> list[dict[str, Any]]:
    body = {
        "model": MODEL,
        "messages": ASK,
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",  # herd's extension; Ollama itself lets the model decide
        "options": {"temperature": 0, "num_predict": 80},
        "stream": stream,
    }
    resp = httpx.post(f"{server.base_url}/api/chat", json=body, timeout=600)
    assert resp.status_code == 200, resp.text
    return [json.loads(line) for line in resp.text.splitlines()]


def test_tool_call_comes_whole_with_object_arguments(server: HerdServer) -> None:
    lines = _forced(server, stream=True)
    with_calls = [line for line in lines if line["message"].get("tool_calls")]
    assert len(with_calls) == 1  # the whole call on one line, as Ollama sends it
    parsed = ollama.ChatResponse.model_validate(with_calls[0])  # the client's own type reads it
    [call] = parsed.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments["city"], str)
    assert lines[-1]["done"] is True
    [whole] = _forced(server, stream=False)
    assert ollama.ChatResponse.model_validate(whole).message.tool_calls == parsed.message.tool_calls


def test_tool_results_in_the_history(client: ollama.Client) -> None:
    history: list[Any] = [
        *ASK,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "tool_name": "get_weather", "content": json.dumps({"temperature": 21, "sky": "clear"})},
    ]
    resp = client.chat(
        model=MODEL, messages=history, tools=[WEATHER_TOOL], options={"temperature": 0, "num_predict": 24}
    )
    assert resp.done and (resp.message.content or resp.message.tool_calls)


def test_logprobs_are_the_models(client: ollama.Client) -> None:
    resp = client.generate(
        model=MODEL, prompt="Hi", logprobs=True, top_logprobs=2, options={"temperature": 0, "num_predict": 6}
    )
    entries = resp.logprobs or []
    assert len(entries) == resp.eval_count
    assert "".join(e.token for e in entries) == resp.response
    for entry in entries:
        assert entry.logprob <= 0.0
        top = entry.top_logprobs or []
        assert len(top) == 2 and top[0].logprob >= top[1].logprob
        assert top[0].token == entry.token and top[0].logprob == pytest.approx(entry.logprob)  # greedy
