"""Gemma 4, LFM2 and Granite 3.x tool calls with llama.cpp's real templates: which templates speak them (Granite's and
LFM2's only describe the syntax), earlier calls and results in the history the template's way, and the calls the
templates write read back by herd's parsers. And the parameters of every family whose arguments are not JSON held to
the tool's schema (types, enums, required ones) by the grammar, and read back as JSON of the schema's types."""

from __future__ import annotations

import itertools
import json
from typing import Any, cast

import pytest
from herd import toolformat, toolparams, toolsyntax
from herd.api.grammar.schema import ToolSpec
from herd.api.grammar.tools import argument_rules
from herd.api.translate.reasoning import OutputParser
from herd.api.translate.tools import CallEnd, Piece, ToolCallParser, parse_all
from herd.inference import ChatMessage, TokenDelta, Tool, ToolCall, ToolConstraint
from herd.workers.template import ChatTemplate

from tests import llama_sources
from tests.test_toolformat import accepts, collect

TEMPLATES = llama_sources.templates_dir()
TOOLS = (Tool("get_weather", "Weather of a city", json.dumps({"type": "object", "properties": {}})),)
ARGS = {"city": "Paris", "days": 2, "metric": True}
CONVERSATION = (
    ChatMessage("user", "Weather in Paris?"),
    ChatMessage("assistant", "", tool_calls=(ToolCall("call_1", "get_weather", json.dumps(ARGS)),)),
    ChatMessage("tool", "sunny", tool_call_id="call_1"),
    ChatMessage("user", "Thanks. And tomorrow?"),
)


def template(name: str) -> ChatTemplate:
    return ChatTemplate((TEMPLATES / f"{name}.jinja").read_text(), "<s>", "</s>")


def test_only_these_templates_of_the_collection_speak_the_new_syntaxes() -> None:
    found = {}
    for path in sorted(TEMPLATES.glob("*.jinja")):
        t = ChatTemplate(path.read_text(), "<s>", "</s>")
        if t.tool_format in ("gemma4", "lfm2", "granite"):
            found[path.stem] = (t.tool_format, t.text_calls)
    assert found == {
        "google-gemma-4-31B-it": ("gemma4", False),
        "google-gemma-4-31B-it-interleaved": ("gemma4", False),
        "LFM2.5-8B-A1B": ("lfm2", False),
        "LFM2-8B-A1B": ("lfm2", True),
        "LFM2.5-Instruct": ("lfm2", True),
        "ibm-granite-granite-3.3-2B-Instruct": ("granite", True),
    }


def test_the_prompt_detection_is_narrow() -> None:
    granite = "respond only with <|tool_call|> followed by a JSON list of tools used."
    assert toolsyntax.detect_prompt(granite) == "granite"
    assert toolsyntax.detect_prompt("You may write <|tool_call|> to call a tool.") is None
    assert toolsyntax.detect_prompt('<|im_start|>system\nList of tools: [{"type": "function"}]') == "lfm2"
    assert toolsyntax.detect_prompt('<|im_start|>user\nList of tools: [{"type": "function"}]') is None


@pytest.mark.parametrize(
    ("name", "call", "result"),
    [
        (
            "ibm-granite-granite-3.3-2B-Instruct",
            '<|start_of_role|>assistant<|end_of_role|><|tool_call|>[{"name": "get_weather", "arguments": '
            '{"city": "Paris", "days": 2, "metric": true}}]<|end_of_text|>',
            "<|start_of_role|>tool<|end_of_role|>sunny<|end_of_text|>",
        ),
        (
            "LFM2-8B-A1B",
            "<|im_start|>assistant\n<|tool_call_start|>[get_weather(city='Paris', days=2, metric=True)]"
            "<|tool_call_end|><|im_end|>",
            "<|im_start|>tool\n<|tool_response_start|>sunny<|tool_response_end|><|im_end|>",
        ),
        (
            "LFM2.5-Instruct",
            "<|im_start|>assistant\n<|tool_call_start|>[get_weather(city='Paris', days=2, metric=True)]"
            "<|tool_call_end|><|im_end|>",
            "<|im_start|>tool\nsunny<|im_end|>",
        ),
        (  # its own template writes the call; herd's writer (for the two above) writes it the same way
            "LFM2.5-8B-A1B",
            "<|im_start|>assistant\n"
            + toolsyntax.text_calls("lfm2", [("get_weather", json.dumps(ARGS))])
            + "<|im_end|>",
            "<|im_start|>tool\nsunny<|im_end|>",
        ),
        (
            "google-gemma-4-31B-it",
            '<|turn>model\n<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:2,metric:true}<tool_call|>'
            '<|tool_response>response:get_weather{value:<|"|>sunny<|"|>}<tool_response|>',
            "<|turn>user\nThanks. And tomorrow?<turn|>",
        ),
    ],
)
def test_calls_and_results_in_the_history_the_templates_way(name: str, call: str, result: str) -> None:
    t = template(name)
    assert t.knows_tools
    prompt = t.render(CONVERSATION, TOOLS)
    assert call in prompt and result in prompt
    assert prompt.index(call) < prompt.index(result)
    assert "<tool_call>" not in prompt  # nothing of herd's Hermes fallback
    # What the template wrote is what herd's parser reads back as the same call.
    written = call[call.index("<|tool_call") :]
    assert [(c.name, json.loads(c.arguments)) for c in parse_all(written, t.tool_format)[1]] == [("get_weather", ARGS)]


def test_granite_is_told_the_syntax_and_shown_the_tools() -> None:
    prompt = template("ibm-granite-granite-3.3-2B-Instruct").render((ChatMessage("user", "Weather?"),), TOOLS)
    assert "<|tool_call|> followed by a JSON list" in prompt and '"name": "get_weather"' in prompt


def test_granite_is_told_the_syntax_under_a_callers_system_message_too() -> None:
    """Granite 3.3's template prints its syntax sentence only in its default system prompt; a caller's replaces it."""
    t = template("ibm-granite-granite-3.3-2B-Instruct")
    told = toolsyntax.SYNTAX_PROMPTS["granite"]
    for messages in ((ChatMessage("system", "Be brief."), *CONVERSATION), (ChatMessage("system", "Be brief."),)):
        prompt = t.render((*messages, ChatMessage("user", "Weather?")), TOOLS)
        system = prompt[: prompt.index("<|end_of_text|>")]
        assert system == f"<|start_of_role|>system<|end_of_role|>Be brief.\n\n{told}"
        assert "<|tool_call|>" in told and '"name": "get_weather"' in prompt
    # Without a system message the template says it itself, and herd adds nothing; without tools, nothing either.
    plain = t.render((ChatMessage("user", "Weather?"),), TOOLS)
    assert toolsyntax.detect_prompt(plain) == "granite" and told not in plain
    assert told not in t.render((ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")))


def test_gemma_values_round_trip() -> None:
    args = {"q": 'say "hi", {ok}', "n": -1.5, "flags": [True, None], "inner": {"k": "v"}}
    text = (
        '<|tool_call>call:search{q:<|"|>say "hi", {ok}<|"|>,n:-1.5,flags:[true,null],inner:{k:<|"|>v<|"|>}}<tool_call|>'
    )
    assert [(c.name, json.loads(c.arguments)) for c in parse_all(text, "gemma4")[1]] == [("search", args)]


# ---- parameters typed by the tool's schema (herd.toolparams) ------------------------------------------------------

FORECAST_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "metric": {"type": "boolean"},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "hours": {"type": "array", "items": {"type": "integer"}},
    },
    "required": ["city", "days"],
}
FORECAST = Tool("get_forecast", "Forecast of a city", json.dumps(FORECAST_SCHEMA))
# Each parameter's value as the XML-like families, Gemma 4 and LFM2 write it.
GOOD = {
    "city": ("Paris", '<|"|>Paris<|"|>', "'Paris'"),
    "days": ("2", "2", "2"),
    "metric": ("true", "true", "True"),
    "unit": ("celsius", '<|"|>celsius<|"|>', "'celsius'"),
    "hours": ("[9, 12]", "[9,12]", "[9, 12]"),
}
GOOD_ARGS = {"city": "Paris", "days": 2, "metric": True, "unit": "celsius", "hours": [9, 12]}
# One wrong value of each kind, or a required parameter left out (None).
BAD: dict[str, tuple[str, tuple[str, str, str] | None]] = {
    "an integer as a word": ("days", ("two", '<|"|>two<|"|>', "'two'")),
    "an integer as a decimal": ("days", ("2.5", "2.5", "2.5")),
    "a string for an integer": ("days", ('"2"', '<|"|>2<|"|>', "'2'")),
    "a boolean as a word": ("metric", ("yes", '<|"|>true<|"|>', "'True'")),
    "a value out of the enum": ("unit", ("kelvin", '<|"|>kelvin<|"|>', "'kelvin'")),
    "a number for an array": ("hours", ("9", "9", "9")),
    "a required parameter left out": ("days", None),
}
TYPED_FORMATS = ("qwen3-coder", "seed-oss", "glm", "minimax-m2", "deepseek-v32", "deepseek-v4", "gemma4", "lfm2")


def write(fmt: str, values: dict[str, tuple[str, str, str]], name: str = "get_forecast") -> str:
    """A call of `name` in `fmt`'s syntax with these parameter values, in the order given."""
    xml = {k: v[0] for k, v in values.items()}
    if fmt in ("qwen3-coder", "seed-oss"):
        tag = "tool_call" if fmt == "qwen3-coder" else "seed:tool_call"
        params = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in xml.items())
        return f"<{tag}>\n<function={name}>\n{params}</function>\n</{tag}>"
    if fmt == "glm":
        pairs = "".join(f"<arg_key>{k}</arg_key>\n<arg_value>{v}</arg_value>\n" for k, v in xml.items())
        return f"<tool_call>{name}\n{pairs}</tool_call>"
    if fmt in toolformat.INVOKE:
        prefix, wrapper = toolformat.INVOKE[fmt]
        attr = (lambda k: f' string="{str(k in ("city", "unit", "note")).lower()}"') if prefix else (lambda k: "")
        params = "".join(f'<{prefix}parameter name="{k}"{attr(k)}>{v}</{prefix}parameter>\n' for k, v in xml.items())
        return f'<{prefix}{wrapper}>\n<{prefix}invoke name="{name}">\n{params}</{prefix}invoke>\n</{prefix}{wrapper}>'
    if fmt == "gemma4":
        return f"<|tool_call>call:{name}{{{','.join(f'{k}:{v[1]}' for k, v in values.items())}}}<tool_call|>"
    return f"<|tool_call_start|>[{name}({', '.join(f'{k}={v[2]}' for k, v in values.items())})]<|tool_call_end|>"


def typed_grammar(fmt: str, tool: Tool = FORECAST) -> str:
    specs = [ToolSpec(tool.name, json.loads(tool.parameters))]
    forced = ToolConstraint((tool.name,), argument_rules(specs, "tools"), forced=True)
    return toolformat.grammar(cast(toolformat.ToolFormat, fmt), forced, (tool,)).gbnf


@pytest.mark.parametrize("fmt", TYPED_FORMATS)
def test_the_grammar_holds_each_value_to_its_schemas_type(vocab: Any, fmt: str) -> None:
    gbnf = typed_grammar(fmt)
    assert accepts(vocab, gbnf, write(fmt, GOOD))
    assert accepts(vocab, gbnf, write(fmt, {k: GOOD[k] for k in ("city", "days")}))  # the optional ones left out
    assert accepts(vocab, gbnf, write(fmt, {k: GOOD[k] for k in ("city", "days", "hours")}))
    for why, (key, value) in BAD.items():
        values = {k: v for k, v in GOOD.items() if k != key or value is not None}
        if value is not None:
            values[key] = value
        assert not accepts(vocab, gbnf, write(fmt, values)), why
    # What the grammar lets through reads back as arguments of the schema's types.
    assert [(c.name, json.loads(c.arguments)) for c in parse_all(write(fmt, GOOD), fmt, SIGNATURES)[1]] == [
        ("get_forecast", GOOD_ARGS)
    ]


SIGNATURES = toolparams.signatures([(FORECAST.name, FORECAST.parameters)])
AS_TEXT = toolparams.signatures([(FORECAST.name, {"properties": {k: {"type": "string"} for k in GOOD}})])


@pytest.mark.parametrize("fmt", TYPED_FORMATS[:6])
def test_xml_values_read_back_as_their_schemas_type_at_every_split(fmt: str) -> None:
    text = "Sure. " + write(fmt, GOOD)
    all_text = {k: v[0] for k, v in GOOD.items()}
    for signatures, expected in ((SIGNATURES, GOOD_ARGS), (AS_TEXT, all_text)):
        assert parse_all(text, fmt, signatures)[0] == "Sure. "
        for size in range(1, len(text) + 1):
            parser = ToolCallParser(signatures=signatures)
            pieces: list[Piece] = []
            for at in range(0, len(text), size):
                pieces += parser.feed(text[at : at + size], fmt if at == 0 else None)
            content, ends, _, streamed = collect([*pieces, *parser.finish()])
            assert content == "Sure. " and len(ends) == 1, size
            assert json.loads(ends[0][1]) == expected, size
            assert streamed[0] == ends[0][1], size


def test_values_of_a_tool_without_a_schema_read_as_the_json_they_look_like() -> None:
    text = write("qwen3-coder", {"days": GOOD["days"], "city": GOOD["city"]}, name="other_tool")
    assert json.loads(parse_all(text, "qwen3-coder", SIGNATURES)[1][0].arguments) == {"days": 2, "city": "Paris"}
    assert toolparams.typed("2", None) == 2 and toolparams.typed("Paris", None) == "Paris"
    number = toolparams.param({"type": "number"})
    assert toolparams.typed("2", number) == 2 and toolparams.typed("2.5", number) == 2.5
    assert toolparams.typed("soon", number) == "soon"  # not a number: left as text, never dropped
    nullable = toolparams.param({"anyOf": [{"type": "integer"}, {"type": "null"}]})
    assert toolparams.typed("null", nullable) is None and toolparams.typed("3", nullable) == 3
    ref = {"$defs": {"u": {"enum": [1, 2]}}, "properties": {"level": {"$ref": "#/$defs/u"}}}
    assert toolparams.signature(ref)[0]["level"] == toolparams.Param(enum=(1, 2))


def test_the_reply_assemblers_type_values_by_the_offered_tools() -> None:
    text = write("qwen3-coder", {"city": GOOD["days"], "days": GOOD["days"]})
    parser = OutputParser(True, signatures=toolparams.signatures([("get_forecast", FORECAST_SCHEMA)]))
    pieces = parser.feed(TokenDelta(0, text, 1, tool_format="qwen3-coder")) + parser.finish()
    ends = [p for p in pieces if isinstance(p, CallEnd)]
    assert [json.loads(c.arguments) for c in ends] == [{"city": "2", "days": 2}]


@pytest.mark.parametrize("required", ["", "c", "ad", "abcd", "b"])
def test_parameters_in_order_take_every_allowed_subset_and_nothing_else(vocab: Any, required: str) -> None:
    items = [(f'"{k}"', k in required) for k in "abcd"]
    gbnf = f'root ::= "[" {toolparams.in_order(items, chr(34) + "," + chr(34))} "]"'
    for n in range(5):
        for keys in itertools.combinations("abcd", n):
            allowed = set(required) <= set(keys)
            assert accepts(vocab, gbnf, "[" + ",".join(keys) + "]") == allowed, (required, keys)
    assert not accepts(vocab, gbnf, "[,a]") and not accepts(vocab, gbnf, "[b,a]") and not accepts(vocab, gbnf, "[a,,b]")


def test_a_tool_with_hundreds_of_optional_parameters_compiles_to_a_linear_grammar(vocab: Any) -> None:
    schema = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(60)}}
    assert len(toolparams.gemma_call("f", json.dumps(schema))) < 60 * 120  # quadratic: ~60 times that
    gbnf = typed_grammar("gemma4", Tool("f", "many", json.dumps(schema)))
    assert accepts(vocab, gbnf, "<|tool_call>call:f{p3:7,p50:1}<tool_call|>")
    assert not accepts(vocab, gbnf, "<|tool_call>call:f{p50:1,p3:7}<tool_call|>")


PLACE_SCHEMA = {
    "type": "object",
    "properties": {
        "note": {"type": "string"},
        "place": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
            "required": ["lat", "lon"],
            "additionalProperties": False,
        },
        "stops": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["place"],
}
PLACE = Tool("go", "Go somewhere", json.dumps(PLACE_SCHEMA))


@pytest.mark.parametrize("fmt", TYPED_FORMATS[:6])
def test_object_and_array_values_are_held_to_their_propertys_own_schema(vocab: Any, fmt: str) -> None:
    gbnf = typed_grammar(fmt, PLACE)
    good = ("a note", '{"lat": 48.8, "lon": 2.3}', '["a", "b"]')

    def call(note: str | None, place: str, stops: str | None) -> str:
        values = {"note": note, "place": place, "stops": stops}
        return write(fmt, {k: (v, v, v) for k, v in values.items() if v is not None}, name="go")

    assert accepts(vocab, gbnf, call(*good))
    assert accepts(vocab, gbnf, call(None, good[1], None))
    assert not accepts(vocab, gbnf, call(None, '{"lat": 48.8}', None))  # a required inner key left out
    assert not accepts(vocab, gbnf, call(None, '{"lat": 48.8, "lon": 2.3, "alt": 1}', None))  # none other allowed
    assert not accepts(vocab, gbnf, call(None, '{"lat": "north", "lon": 2.3}', None))  # an inner value's type
    assert not accepts(vocab, gbnf, call(None, good[1], '["c"]'))  # an item out of its enum
    assert not accepts(vocab, gbnf, call(None, good[1], '["a", "b", "a"]'))  # more items than allowed
    # What the grammar lets through reads back as the arguments.
    typed = toolparams.signatures([(PLACE.name, PLACE.parameters)])
    assert json.loads(parse_all(call(*good), fmt, typed)[1][0].arguments) == {
        "note": "a note",
        "place": {"lat": 48.8, "lon": 2.3},
        "stops": ["a", "b"],
    }


def test_without_the_propertys_rule_an_object_value_takes_any_json_object(vocab: Any) -> None:
    """A constraint whose rules carry no `args-i-j` (from an API that made none) falls back to the JSON rules."""
    specs = [ToolSpec(PLACE.name, PLACE_SCHEMA)]
    rules = "\n".join(line for line in argument_rules(specs, "tools").splitlines() if not line.startswith("args-0-"))
    gbnf = toolformat.grammar("qwen3-coder", ToolConstraint((PLACE.name,), rules, forced=True), (PLACE,)).gbnf
    assert "args-0-1" not in gbnf
    loose = write("qwen3-coder", {"place": ('{"lat": 48.8}',) * 3}, name="go")
    assert accepts(vocab, gbnf, loose)
    assert not accepts(vocab, typed_grammar("qwen3-coder", PLACE), loose)
