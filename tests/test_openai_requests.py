"""api/translate/openai_requests.py as a unit: OpenAI chat, completions and embeddings bodies -> the internal requests,
and the bad fields it refuses (each InvalidRequest names its parameter)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from herd.api.grammar.schema import GrammarCache
from herd.api.translate import openai_requests as translate
from herd.api.wire import openai as wire
from herd.errors import InvalidRequest
from herd.inference import SamplingParams


def chat(**fields: Any) -> wire.ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return msgspec.json.decode(msgspec.json.encode(body), type=wire.ChatCompletionRequest)


def completion(**fields: Any) -> wire.CompletionRequest:
    return msgspec.json.decode(
        msgspec.json.encode({"model": "m", "prompt": "hi", **fields}), type=wire.CompletionRequest
    )


def test_a_chat_body_becomes_one_generation_request() -> None:
    body = chat(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
        temperature=0.5,
        top_p=0.9,
        seed=7,
        presence_penalty=0.25,
        frequency_penalty=0.5,
        logit_bias={"15": -100, "16": 2.5},
        max_tokens=20,
        stop="END",
        n=2,
        logprobs=True,
        top_logprobs=3,
    )
    req = translate.chat_request(body, "r1", GrammarCache())
    assert (req.id, req.model, req.prompt, req.n, req.max_tokens, req.stop, req.logprobs) == (
        "r1",
        "m",
        None,
        2,
        20,
        ("END",),
        3,
    )
    assert [(m.role, m.content) for m in req.messages or ()] == [
        ("system", "Be brief."),
        ("user", "one two"),
        ("assistant", ""),
        ("tool", "42"),
    ]
    assistant, tool = (req.messages or ())[2:]
    assert [(c.id, c.name, c.arguments) for c in assistant.tool_calls] == [("c1", "f", "{}")]
    assert tool.tool_call_id == "c1"
    assert req.sampling == SamplingParams(
        temperature=0.5,
        top_p=0.9,
        seed=7,
        presence_penalty=0.25,
        frequency_penalty=0.5,
        logit_bias=((15, -100.0), (16, 2.5)),
    )
    assert req.enqueued_at > 0 and req.grammar is None and req.tools == ()


def test_openai_defaults_and_the_greedy_spelling() -> None:
    req = translate.chat_request(chat(), "r", GrammarCache())
    assert (req.sampling.temperature, req.sampling.top_p, req.n, req.max_tokens, req.logprobs) == (
        1.0,
        1.0,
        1,
        None,
        None,
    )
    greedy = translate.chat_request(chat(top_p=0), "r", GrammarCache()).sampling
    assert (greedy.temperature, greedy.top_p) == (0.0, 1.0)  # top_p 0: only the likeliest token
    newer = translate.chat_request(chat(max_tokens=5, max_completion_tokens=9, stop=["a", "b"]), "r", GrammarCache())
    assert (newer.max_tokens, newer.stop) == (9, ("a", "b"))  # max_completion_tokens wins over the deprecated one


def test_tools_are_described_to_the_model_and_constrain_a_forced_call() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    auto = translate.chat_request(chat(tools=[tool]), "r", GrammarCache())
    assert [(t.name, t.description) for t in auto.tools] == [("weather", "Weather in a city")]
    assert msgspec.json.decode(auto.tools[0].parameters)["required"] == ["city"]
    forced = translate.chat_request(
        chat(tools=[tool], tool_choice={"type": "function", "function": {"name": "weather"}}), "r", GrammarCache()
    )
    assert forced.tool_constraint is not None and forced.tool_constraint.forced
    none = translate.chat_request(chat(tools=[tool], tool_choice="none"), "r", GrammarCache())
    assert none.tool_constraint is None or not none.tool_constraint.forced


def test_a_json_schema_response_format_becomes_a_grammar() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    grammars = GrammarCache()
    req = translate.chat_request(chat(response_format=fmt), "r", grammars)
    assert req.grammar is not None and "root" in req.grammar.gbnf
    again = translate.chat_request(chat(response_format=fmt), "r2", grammars)
    assert again.grammar == req.grammar  # compiled once per schema
    assert translate.chat_request(chat(response_format={"type": "json_object"}), "r", grammars).grammar is not None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logit_bias": {"hello": 1}}, "logit_bias"),
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
    ],
)
def test_bad_chat_fields_are_refused_by_name(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        translate.chat_request(chat(**fields), "r", GrammarCache())
    assert info.value.param == param


def test_a_completions_body_is_one_request_per_prompt() -> None:
    (one,) = translate.completion_requests(completion(suffix="end", echo=False, max_tokens=4, logprobs=2), "c")
    assert (one.prompt, one.messages, one.suffix, one.max_tokens, one.logprobs) == ("hi", None, "end", 4, 2)
    many = translate.completion_requests(completion(prompt=["a", "b", "c"], n=2), "c")
    assert [(r.prompt, r.n) for r in many] == [("a", 2), ("b", 2), ("c", 2)]
    assert len({r.id for r in many}) == 3  # each prompt its own request (and event channel)
    with pytest.raises(InvalidRequest) as info:
        translate.completion_requests(completion(n=2, best_of=3), "c")
    assert info.value.param == "best_of"


def test_an_embeddings_body_keeps_its_inputs_in_order() -> None:
    body = msgspec.convert({"model": "e", "input": ["a", "bc"], "dimensions": 8}, wire.EmbeddingCreateParams)
    req = translate.embedding_request(body, "e1")
    assert (req.id, req.model, req.inputs, req.dimensions) == ("e1", "e", ("a", "bc"), 8)
    tokens = msgspec.convert({"model": "e", "input": [[1, 2], [3]]}, wire.EmbeddingCreateParams)
    assert translate.embedding_request(tokens, "e2").inputs == ((1, 2), (3,))
    single = msgspec.convert({"model": "e", "input": "one"}, wire.EmbeddingCreateParams)
    assert translate.embedding_request(single, "e3").inputs == ("one",)
