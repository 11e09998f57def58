"""Chat Completions' legacy `functions` / `function_call`, through the openai SDK: honoured as tools, answered in the
legacy shape (`function_call`, finish_reason "function_call"), each reply and chunk valid in the SDK's strict types."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.conftest import MODEL, HerdServer

WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def sdk(server: HerdServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=300) as client:
        yield client


def test_a_named_function_call_comes_back_in_the_legacy_shape(sdk: openai.OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model=MODEL, messages=ASK, functions=[WEATHER], function_call={"name": "get_weather"}, max_tokens=60
    )
    ChatCompletion.model_validate(raw.http_response.json(), strict=True)
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.tool_calls is None
    call = choice.message.function_call
    assert call is not None and call.name == "get_weather"
    assert isinstance(json.loads(call.arguments)["city"], str)


def test_a_streamed_function_call_is_legacy_deltas(server: HerdServer) -> None:
    body = {
        "model": MODEL,
        "messages": ASK,
        "functions": [WEATHER],
        "function_call": {"name": "get_weather"},
        "max_tokens": 60,
        "stream": True,
    }
    answer = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=300)
    assert answer.status_code == 200
    chunks = [
        ChatCompletionChunk.model_validate(json.loads(line[6:]), strict=True)
        for line in answer.text.splitlines()
        if line.startswith("data: {")
    ]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [d.function_call for d in deltas if d.function_call is not None]
    assert all(d.tool_calls is None for d in deltas)
    assert calls[0].name == "get_weather" and all(c.name is None for c in calls[1:])
    assert len(calls) > 2  # the arguments came in fragments
    assert isinstance(json.loads("".join(c.arguments or "" for c in calls))["city"], str)
    assert chunks[-1].choices[0].finish_reason == "function_call"


def test_function_call_none_and_auto_never_answer_with_tool_calls(sdk: openai.OpenAI) -> None:
    none = sdk.chat.completions.create(
        model=MODEL, messages=ASK, functions=[WEATHER], function_call="none", max_tokens=12, temperature=0
    )
    assert none.choices[0].message.function_call is None and none.choices[0].message.tool_calls is None
    assert none.choices[0].finish_reason in ("stop", "length") and none.choices[0].message.content
    auto = sdk.chat.completions.create(
        model=MODEL, messages=ASK, functions=[WEATHER], function_call="auto", max_tokens=60, temperature=0
    )
    choice = auto.choices[0]
    assert choice.message.tool_calls is None
    assert (choice.message.function_call is not None) == (choice.finish_reason == "function_call")


def test_a_legacy_function_result_continues_the_conversation(sdk: openai.OpenAI) -> None:
    messages: list[Any] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        },
        {"role": "function", "name": "get_weather", "content": '{"temperature_c": 21, "sky": "clear"}'},
    ]
    reply = sdk.chat.completions.create(
        model=MODEL, messages=messages, functions=[WEATHER], function_call="none", max_tokens=24, temperature=0
    )
    assert reply.choices[0].message.content and reply.choices[0].message.function_call is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"functions": [WEATHER], "tools": [{"type": "function", "function": WEATHER}]}, "functions"),
        ({"functions": [WEATHER], "function_call": {"name": "get_time"}}, "function_call.name"),
        ({"function_call": "auto"}, "function_call"),
        ({"messages": [{"role": "function", "name": "f", "content": "1"}]}, "messages[0].role"),
    ],
)
def test_bad_legacy_requests_are_400s_naming_the_field(sdk: openai.OpenAI, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(**{"model": MODEL, "messages": ASK, "max_tokens": 4, **extra})
    assert caught.value.param == param
