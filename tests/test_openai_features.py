"""Tools, structured output, logprobs, n, seed, logit_bias, echo and suffix through the real openai SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

import jsonschema
import llama_cpp
import openai
import pydantic
import pytest

from tests.conftest import MODEL, HerdServer

WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "A city's weather", "parameters": WEATHER}},
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The time in a time zone",
            "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}}},
        },
    },
]
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def sdk(server: HerdServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300) as client:
        yield client


@pytest.fixture(scope="module")
def vocab(model_path: str) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)


class City(pydantic.BaseModel):
    name: Annotated[str, pydantic.Field(max_length=30)]
    country: Annotated[str, pydantic.Field(max_length=30)]
    population: int


def test_json_schema_parses_into_a_pydantic_model(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format=City,
        max_tokens=120,
        temperature=0,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, City)
    assert completion.choices[0].finish_reason == "stop"


def test_json_object_is_json(sdk: openai.OpenAI) -> None:
    resp = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": 'A JSON object with the keys "name" and "color" for a cat.'}],
        response_format={"type": "json_object"},
        max_tokens=200,
        temperature=0,
    )
    assert resp.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(resp.choices[0].message.content or ""), dict)


@pytest.mark.parametrize(
    ("schema", "param"),
    [
        ({"type": "object", "properties": {"x": {"type": "string", "pattern": "(a)\\1"}}}, ".properties.x.pattern"),
        ({"$ref": "http://127.0.0.1:9/schema.json"}, ".$ref"),
        ({"type": "array", "items": {"type": "string"}, "maxItems": 100000}, ".maxItems"),
    ],
)
def test_a_bad_schema_is_a_400_naming_the_place(sdk: openai.OpenAI, schema: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model=MODEL,
            messages=ASK,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        )
    assert caught.value.param == f"response_format.json_schema.schema{param}"


def test_required_tool_call_fits_its_schema(sdk: openai.OpenAI) -> None:
    resp = sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=80, temperature=0
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in ("get_weather", "get_time")  # type: ignore[union-attr]
    schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == call.function.name)  # type: ignore[union-attr]
    jsonschema.validate(json.loads(call.function.arguments), schema)  # type: ignore[union-attr]


def test_named_tool_choice_calls_that_tool(sdk: openai.OpenAI) -> None:
    resp = sdk.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=80,
        temperature=0,
    )
    calls = resp.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_time"]  # type: ignore[union-attr]
    jsonschema.validate(json.loads(calls[0].function.arguments), TOOLS[1]["function"]["parameters"])  # type: ignore[union-attr]


def test_tool_choice_none_answers_in_text(sdk: openai.OpenAI) -> None:
    resp = sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=16, temperature=0
    )
    assert resp.choices[0].message.tool_calls is None
    assert resp.choices[0].message.content


def test_tool_choice_errors_name_the_field(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "launch_rocket"}},
        )
    assert caught.value.param == "tool_choice"
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model=MODEL, messages=ASK, tool_choice="required")
    assert caught.value.param == "tool_choice"


class GetWeather(pydantic.BaseModel):
    city: Annotated[str, pydantic.Field(max_length=40)]


def test_streamed_tool_call_follows_openai_delta_rules(sdk: openai.OpenAI) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=[openai.pydantic_function_tool(GetWeather)],
            tool_choice="required",
            max_tokens=60,
            temperature=0,
            stream=True,
        )
    )
    deltas = [tc for c in chunks for ch in c.choices for tc in (ch.delta.tool_calls or [])]
    first, rest = deltas[0], deltas[1:]
    assert first.index == 0 and first.id and first.type == "function"
    assert first.function is not None and first.function.name == "GetWeather" and first.function.arguments == ""
    assert rest and all(d.id is None and d.type is None and d.function and d.function.name is None for d in rest)
    arguments = "".join(d.function.arguments or "" for d in rest if d.function)
    assert GetWeather.model_validate_json(arguments)
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["tool_calls"]

    with sdk.chat.completions.stream(
        model=MODEL,
        messages=ASK,
        tools=[openai.pydantic_function_tool(GetWeather)],
        tool_choice="required",
        max_tokens=60,
        temperature=0,
    ) as stream:
        final = stream.get_final_completion()
    call = (final.choices[0].message.tool_calls or [])[0]
    assert isinstance(call.function.parsed_arguments, GetWeather)  # type: ignore[union-attr]
    assert call.function.arguments == arguments  # type: ignore[union-attr]  # stream and helper agree


def test_tool_result_round_trip(sdk: openai.OpenAI) -> None:
    first = sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=80, temperature=0
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    history: list[Any] = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "clear"})},
    ]
    second = sdk.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=24, temperature=0)
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert second.choices[0].message.content or second.choices[0].message.tool_calls
    with pytest.raises(openai.BadRequestError) as caught:  # a tool result must say which call it answers
        sdk.chat.completions.create(model=MODEL, messages=[*ASK, {"role": "tool", "content": "21"}])  # type: ignore[list-item]
    assert caught.value.param == "messages[1].tool_call_id"


def test_logprobs_are_the_models(sdk: openai.OpenAI) -> None:
    resp = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count: one, two,"}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    entries = resp.choices[0].logprobs.content  # type: ignore[union-attr]
    assert entries is not None and resp.usage is not None
    assert len(entries) == resp.usage.completion_tokens
    assert "".join(e.token for e in entries) == resp.choices[0].message.content
    for entry in entries:
        assert entry.logprob <= 0.0
        assert len(entry.top_logprobs) == 3
        logprobs = [t.logprob for t in entry.top_logprobs]
        assert logprobs == sorted(logprobs, reverse=True)
        # Greedy: what was chosen is the likeliest token, with that same probability.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert bytes(entry.bytes or []).decode() == entry.token


def test_completion_logprobs_and_echo(sdk: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    resp = sdk.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, logprobs=2, echo=True)
    choice = resp.choices[0]
    assert choice.text.startswith(prompt)
    lp = choice.logprobs
    assert lp is not None and lp.tokens is not None and lp.top_logprobs is not None and lp.text_offset is not None
    assert prompt + "".join(lp.tokens) == choice.text
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    assert lp.text_offset[0] == len(prompt)


def test_suffix_needs_infill_tokens(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:  # SmolLM2 has no fill-in-the-middle tokens
        sdk.completions.create(model=MODEL, prompt="def add(a, b):", suffix="    return c", max_tokens=8)
    assert caught.value.param == "suffix"


def test_n_choices_fork_from_one_prefill(sdk: openai.OpenAI) -> None:
    one = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, temperature=0)
    two = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, temperature=0, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    # Greedy choices forked from the prompt's KV cells are exactly the one-choice answer.
    assert [c.message.content for c in two.choices] == [one.choices[0].message.content] * 2
    assert one.usage is not None and two.usage is not None
    assert two.usage.prompt_tokens == one.usage.prompt_tokens
    assert two.usage.completion_tokens == 2 * one.usage.completion_tokens

    sampled = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=16, temperature=1.0, seed=7, n=3)
    texts = [c.message.content for c in sampled.choices]
    assert len(set(texts)) > 1  # each choice draws its own tokens
    stream = sdk.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=16, temperature=1.0, seed=7, n=3, stream=True
    )
    streamed = ["", "", ""]
    for chunk in stream:
        for ch in chunk.choices:
            streamed[ch.index] += ch.delta.content or ""
    assert streamed == texts  # same seed, same choices, streamed or not


def test_seed_reproduces_sampling(sdk: openai.OpenAI) -> None:
    def run(seed: int) -> str:
        resp = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=16, temperature=1.2, seed=seed)
        return resp.choices[0].message.content or ""

    assert run(11) == run(11)
    assert len({run(s) for s in (12, 13, 14)}) > 1


def test_logit_bias_bans_a_token(sdk: openai.OpenAI, vocab: llama_cpp.Llama) -> None:
    def first(**extra: Any) -> str:
        resp = sdk.completions.create(
            model=MODEL, prompt="One, two, three,", max_tokens=1, temperature=0, logprobs=0, **extra
        )
        return (resp.choices[0].logprobs.tokens or [""])[0]  # type: ignore[union-attr]

    token = first()
    ids = vocab.tokenize(token.encode(), add_bos=False, special=False)
    assert len(ids) == 1
    assert first(logit_bias={str(ids[0]): -100}) != token
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.completions.create(model=MODEL, prompt="x", max_tokens=1, logit_bias={"word": 5})
    assert caught.value.param == "logit_bias"
