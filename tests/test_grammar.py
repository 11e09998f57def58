"""JSON Schema -> GBNF (checked by llama.cpp's own grammar parser on the real vocabulary) and the tool-call parser."""

from __future__ import annotations

import json
from typing import Any, Literal

import pydantic
import pytest
from herd import toolformat
from herd.api.grammar.schema import JSON_OBJECT_GRAMMAR, GrammarCache, ToolSpec, schema_grammar
from herd.api.grammar.tools import argument_rules
from herd.api.translate.tools import CallArguments, CallEnd, CallStart, Content, ToolCallParser, parse_all
from herd.errors import InvalidRequest
from herd.inference import Tool, ToolConstraint

from tests.gbnf import parses


class Address(pydantic.BaseModel):
    street: str
    city: str
    zip: str | None = None


class Person(pydantic.BaseModel):
    name: str
    age: int
    height: float
    tags: list[str]
    role: Literal["admin", "user"]
    home: Address
    previous: list[Address] = []
    nickname: str | None = None


SCHEMAS: list[Any] = [
    Person.model_json_schema(),
    {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False},
    {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "boolean"}}},  # all optional
    {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3},
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
    {"type": ["string", "null"], "maxLength": 10},
    {"enum": ["red", "green", 3, None]},
    {"const": {"x": 1}},
    {"anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "uuid"}]},
    {"type": "object", "additionalProperties": {"type": "integer"}},
    {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}}, {"properties": {"b": {"type": "null"}}}]},
    {  # recursive
        "$defs": {
            "node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}
        },
        "$ref": "#/$defs/node",
    },
    {"type": "object", "properties": {'ünï "quoted" key': {"type": "string"}}, "required": ['ünï "quoted" key']},
    {},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=range(len(SCHEMAS)))
def test_schemas_compile_to_grammars_llama_cpp_accepts(vocab: Any, schema: Any) -> None:
    assert parses(vocab, schema_grammar(schema, "response_format.json_schema.schema"))


def test_a_broken_grammar_is_refused_by_the_same_check(vocab: Any) -> None:
    assert not parses(vocab, 'root ::= "unterminated')  # the check above can fail


def test_json_object_and_tool_grammars_parse(vocab: Any) -> None:
    assert parses(vocab, JSON_OBJECT_GRAMMAR)
    tools = [
        ToolSpec("get_weather", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        ToolSpec("get-time", {}),
        ToolSpec("lookup", Person.model_json_schema()),
    ]
    # The API compiles the arguments; the worker wraps them in its model's call syntax (Hermes tags here).
    for chosen, parallel in ((tools, True), (tools[:1], False)):
        rules = argument_rules(chosen, "tools")
        constraint = ToolConstraint(tuple(s.name for s in chosen), rules, parallel, forced=True)
        shown = tuple(Tool(s.name, "", json.dumps(s.parameters)) for s in chosen)
        assert parses(vocab, toolformat.grammar("hermes", constraint, shown).gbnf)


@pytest.mark.parametrize(
    ("schema", "param"),
    [
        ({"$ref": "http://127.0.0.1:1/x.json"}, "s.$ref"),
        ({"type": "string", "pattern": "(?<=a)b"}, "s.pattern"),  # lookbehind: see test_pattern.py
        ({"type": "array", "maxItems": 10**6}, "s.maxItems"),
        ({"type": "object", "properties": {"a": {"type": "strnig"}}}, "s.properties.a.type"),
        ({"type": "string", "format": "color"}, "s.format"),
        ({"$ref": "#/$defs/missing"}, "s.$ref"),
        ({"type": "array", "minItems": 3, "maxItems": 1}, "s.maxItems"),
        ({"anyOf": []}, "s.anyOf"),
        ("not a schema", "s"),
    ],
)
def test_bad_schemas_are_refused_naming_the_place(schema: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        schema_grammar(schema, "s")
    assert caught.value.param == param


def test_abusive_schemas_are_refused() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(100):
        deep = {"type": "array", "items": deep}
    with pytest.raises(InvalidRequest, match="deeper"):
        schema_grammar(deep, "s")
    huge = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 99} for i in range(999)}}
    with pytest.raises(InvalidRequest, match="bytes"):
        schema_grammar(huge, "s")
    wide = {"type": "object", "properties": {f"p{i}": {"enum": [i]} for i in range(2100)}}
    with pytest.raises(InvalidRequest, match="too large"):
        schema_grammar(wide, "s")


def test_grammar_cache_is_bounded_and_compiles_once() -> None:
    cache, calls = GrammarCache(size=2), []
    for key in ["a", "b", "a", "c", "a", "b"]:
        cache.get_or_compile(key, lambda key=key: calls.append(key) or f"g-{key}")  # type: ignore[func-returns-value]
    assert calls == ["a", "b", "c", "b"]  # "a" stayed (recently used), "b" was evicted by "c"


GENERATED = (
    'Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris \\"}{\\" France", '
    '"days": [1, 2]}}</tool_call>\n<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
)


def test_tool_call_parser_streams_the_same_calls_whatever_the_split() -> None:
    content, calls = parse_all(GENERATED)
    assert content == "Let me check. "
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": 'Paris "}{" France', "days": [1, 2]}),
        ("get_time", {}),
    ]
    for size in (1, 2, 3, 7, 50):
        parser = ToolCallParser()
        pieces = [p for i in range(0, len(GENERATED), size) for p in parser.feed(GENERATED[i : i + size])]
        pieces += parser.finish()
        text = "".join(p.text for p in pieces if isinstance(p, Content))
        assert text == content
        starts = [p for p in pieces if isinstance(p, CallStart)]
        assert [(s.index, s.name) for s in starts] == [(0, "get_weather"), (1, "get_time")]
        for call in calls:
            fragments = [p.fragment for p in pieces if isinstance(p, CallArguments) and p.index == calls.index(call)]
            assert "".join(fragments) == call.arguments
        assert [p.index for p in pieces if isinstance(p, CallEnd)] == [0, 1]


def test_text_that_only_looks_like_a_call_stays_content() -> None:
    assert parse_all("a <tool_ca and < b") == ("a <tool_ca and < b", [])
    assert parse_all("x <tool_call>not json") == ("x <tool_call>not json", [])
