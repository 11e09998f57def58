"""Per-family tool calls: detected from llama.cpp's templates, parsed from each family's canonical output at every
split of the stream, and constrained by grammars in the family's own syntax that llama.cpp's parser takes and that
accept those outputs (checked token by token with llama.cpp's grammar sampler)."""

from __future__ import annotations

import ctypes
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import llama_cpp as L
import pytest
from herd import toolformat
from herd.api.grammar.schema import ToolSpec
from herd.api.grammar.tools import argument_rules
from herd.api.translate.tools import CallArguments, CallEnd, CallStart, Content, Piece, ToolCallParser, parse_all
from herd.inference import ChatMessage, Tool, ToolConstraint
from herd.toolformat import DS_CALL, DS_CALL_END, DS_CALLS, DS_CALLS_END, DS_SEP, DSML
from herd.workers.template import ChatTemplate

from tests import llama_sources
from tests.gbnf import parses

TEMPLATES = llama_sources.templates_dir()
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}
TOOLS = (Tool("get_weather", "Weather of a city", json.dumps(WEATHER_SCHEMA)), Tool("get_time", "Time now", "{}"))
SPECS = [ToolSpec(t.name, json.loads(t.parameters)) for t in TOOLS]

DETECTED = {
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": "hermes",
    "Qwen-Qwen2.5-7B-Instruct": "hermes",
    "Qwen-Qwen3-0.6B": "hermes",
    "meta-llama-Llama-3.1-8B-Instruct": "llama3",
    "meta-llama-Llama-3.2-3B-Instruct": "llama3",
    "meta-llama-Llama-3.3-70B-Instruct": "llama3",
    "mistralai-Mistral-Nemo-Instruct-2407": "mistral",
    "Mistral-Small-3.2-24B-Instruct-2506": "mistral-args",
    "unsloth-mistral-Devstral-Small-2507": "mistral-args",
    "mistralai-Ministral-3-14B-Reasoning-2512": "mistral-args",
    "openai-gpt-oss-120b": "gpt-oss",
    "Qwen3-Coder": "qwen3-coder",
    "Qwen3.5-4B": "qwen3-coder",
    "ByteDance-Seed-OSS": "seed-oss",
    "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": "qwen3-coder",
    "ibm-granite-granite-4.0": "hermes",
    "GLM-4.6": "glm",
    "GLM-4.7-Flash": "glm",
    "inclusionai-ling-3.0-flash": "glm",
    "poolside-Laguna-XS-2.1": "glm",
    "moonshotai-Kimi-K2": "kimi-k2",
    "Kimi-K2-Instruct": "kimi-k2",
    "meetkai-functionary-medium-v3.1": "functionary-v3.1",
    "meetkai-functionary-medium-v3.2": "functionary-v3.2",
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use": "command-r",
    "Cohere2MoE": "command-r",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": "deepseek-r1",
    "deepseek-ai-DeepSeek-V3.1": "deepseek-v3",
    "NVIDIA-Nemotron-Nano-v2": "nemotron-v2",
    "unsloth-Apriel-1.5": "apriel",
    "Apriel-1.6-15b-Thinker-fixed": "apriel",
    "MiniMax-M1": "minimax-m1",
    "fireworks-ai-llama-3-firefunction-v2": "firefunction-v2",
    "MiniMax-M2": "minimax-m2",
    "deepseek-ai-DeepSeek-V3.2": "deepseek-v32",
    "deepseek-ai-DeepSeek-V4": "deepseek-v4",
    "google-gemma-4-31B-it": "gemma4",
    "google-gemma-4-31B-it-interleaved": "gemma4",
    "LFM2.5-8B-A1B": "lfm2",
}
# Templates that render tools in a syntax herd does not read (yet), or none: tools described with Hermes tags.
DESCRIBED = [
    "google-gemma-2-2b-it",
    "CohereForAI-c4ai-command-r-plus-tool_use",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B",
]

# (format, generated text, content, [(name, arguments)]) - the families' own call syntax, as their templates and
# llama.cpp's test-chat cases write it.
CASES: list[tuple[str, str, str, list[tuple[str, Any]]]] = [
    (
        "hermes",
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>',
        "Let me check.\n",
        [("get_weather", {"city": "Paris", "days": 2})],
    ),
    ("llama3", '{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [("get_weather", {"city": "Paris"})]),
    (
        "llama3",
        '<|python_tag|>{"type": "function", "name": "get_time", "parameters": {}}',
        "",
        [("get_time", {})],
    ),
    ("llama3", "It is sunny in {city} today.", "It is sunny in {city} today.", []),
    (
        "mistral",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1B2c3D4e"}, '
        '{"name": "get_time", "arguments": {}, "id": "Z9y8X7w6v"}]',
        "",
        [("get_weather", {"city": "Paris"}), ("get_time", {})],
    ),
    (
        "mistral-args",
        'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris [FR]"}[TOOL_CALLS]get_time[ARGS]{}',
        "Sure.",
        [("get_weather", {"city": "Paris [FR]"}), ("get_time", {})],
    ),
    (
        "mistral-args",
        '[TOOL_CALLS]get_weather[CALL_ID]a1B2c3D4e[ARGS]{"city": "Paris"}',
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        "gpt-oss",
        "<|channel|>analysis<|message|>The user wants the weather; call the tool.<|end|><|start|>assistant"
        '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}',
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        "gpt-oss",
        " to=functions.get_time<|channel|>commentary json<|message|>{}",
        "",
        [("get_time", {})],
    ),
    (
        "gpt-oss",
        "<|channel|>analysis<|message|>Simple.<|end|><|start|>assistant<|channel|>final<|message|>Hello <b>you</b>",
        "Hello <b>you</b>",
        [],
    ),
    (
        "qwen3-coder",
        "I will look.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
        "I will look.\n",
        [("get_weather", {"city": "Paris", "days": 3})],
    ),
    (
        "glm",
        "Checking.<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
        "<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n</tool_call><tool_call>get_time</tool_call>",
        "Checking.",
        [("get_weather", {"city": "Paris", "days": 2}), ("get_time", {})],
    ),
    (
        "glm",
        '<tool_call>{"name": "get_time"}</tool_call> is not GLM',
        '<tool_call>{"name": "get_time"}</tool_call> is not GLM',
        [],
    ),
    (
        "functionary-v3.1",
        'Sure <function=get_weather>{"city": "Paris"}</function>',
        "Sure ",
        [("get_weather", {"city": "Paris"})],
    ),
    ("functionary-v3.1", "a <function=x y> b", "a <function=x y> b", []),
    (
        "functionary-v3.2",
        'get_weather\n{"city": "Paris"}>>>get_time\n{}',
        "",
        [("get_weather", {"city": "Paris"}), ("get_time", {})],
    ),
    ("functionary-v3.2", "all\nHello >> there", "Hello >> there", []),
    (
        "functionary-v3.2",
        'all\nLet me look.>>>get_weather\n{"city": "Paris"}',
        "Let me look.",
        [("get_weather", {"city": "Paris"})],
    ),
    ("functionary-v3.2", "Just text, no recipient.", "Just text, no recipient.", []),
    (
        "command-r",
        "<|START_THINKING|>I will look up the weather.<|END_THINKING|><|START_ACTION|>[\n"
        '    {"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Paris"}},\n'
        '    {"tool_call_id": "1", "tool_name": "get_time", "parameters": {}}\n]<|END_ACTION|>',
        "",
        [("get_weather", {"city": "Paris"}), ("get_time", {})],
    ),
    (
        "command-r",
        "<|START_THINKING|>No tool needed.<|END_THINKING|><|START_RESPONSE|>Hello <b>there</b><|END_RESPONSE|>",
        "Hello <b>there</b>",
        [],
    ),
    (
        "deepseek-r1",
        f"<think>\nThe user wants weather.\n</think>\n\n{DS_CALLS}{DS_CALL}function{DS_SEP}get_weather\n```json\n"
        f'{{"city": "Paris"}}\n```{DS_CALL_END}{DS_CALL}function{DS_SEP}get_time\n```json\n{{}}\n```{DS_CALL_END}'
        f"{DS_CALLS_END}",
        "<think>\nThe user wants weather.\n</think>\n\n",
        [("get_weather", {"city": "Paris"}), ("get_time", {})],
    ),
    (
        "deepseek-v3",
        f'{DS_CALLS}{DS_CALL}get_weather{DS_SEP}{{"city": "Paris"}}{DS_CALL_END}{DS_CALLS_END}',
        "",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        "nemotron-v2",
        'Checking.\n<TOOLCALL>[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_time", "arguments": {}}]</TOOLCALL>',
        "Checking.\n",
        [("get_weather", {"city": "Paris"}), ("get_time", {})],
    ),
    (
        "apriel",
        'Sure.<tool_calls>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_calls>',
        "Sure.",
        [("get_weather", {"city": "Paris"})],
    ),
    (
        "minimax-m1",
        '<tool_calls>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '{"name": "get_time", "arguments": {}}\n</tool_calls>',
        "",
        [("get_weather", {"city": "Paris"}), ("get_time", {})],
    ),
    (
        "firefunction-v2",
        ' functools[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]',
        "",
        [("get_weather", {"city": "Paris"}), ("get_time", {})],
    ),
    (
        "minimax-m2",
        'Let me check.\n<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris</parameter>\n'
        '<parameter name="days">2</parameter>\n</invoke>\n<invoke name="get_time">\n</invoke>\n</minimax:tool_call>',
        "Let me check.\n",
        [("get_weather", {"city": "Paris", "days": 2}), ("get_time", {})],
    ),
    (
        "deepseek-v32",
        f'<{DSML}function_calls>\n<{DSML}invoke name="get_weather">\n<{DSML}parameter name="city" string="true">'
        f'2</{DSML}parameter>\n<{DSML}parameter name="days" string="false">3</{DSML}parameter>\n</{DSML}invoke>\n'
        f"</{DSML}function_calls>",
        "",
        [("get_weather", {"city": "2", "days": 3})],
    ),
    (
        "kimi-k2",
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>"
        '{"city": "Paris"}<|tool_call_end|><|tool_call_begin|>functions.get_time:1<|tool_call_argument_begin|>{}'
        "<|tool_call_end|><|tool_calls_section_end|>",
        "",
        [("get_weather", {"city": "Paris"}), ("get_time", {})],
    ),
    (
        "seed-oss",
        "<seed:tool_call>\n<function=get_weather>\n<parameter=city>New\nYork</parameter>\n</function>\n</seed:tool_call>",
        "",
        [("get_weather", {"city": "New\nYork"})],
    ),
    (
        "gemma4",
        'Checking.<|tool_call>call:get_weather{city:<|"|>Paris, "FR"<|"|>,days:2,opts:{metric:true,tags:[<|"|>a<|"|>'
        ",null]}}<tool_call|>",
        "Checking.",
        [("get_weather", {"city": 'Paris, "FR"', "days": 2, "opts": {"metric": True, "tags": ["a", None]}})],
    ),
    (
        "gemma4",
        '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|><|tool_call>call:get_time{}<tool_call|>',
        "",
        [("get_weather", {"city": "Paris"}), ("get_time", {})],
    ),
    ("gemma4", "<|tool_call>not a call<tool_call|> ok", "<|tool_call>not a call<tool_call|> ok", []),
    (
        "lfm2",
        "Sure.<|tool_call_start|>[get_weather(city='Paris', days=-2, metric=True, opts={\"a\": [1, null]})]"
        "<|tool_call_end|>Done.",
        "Sure.Done.",
        [("get_weather", {"city": "Paris", "days": -2, "metric": True, "opts": {"a": [1, None]}})],
    ),
    (
        "lfm2",
        "<|tool_call_start|>[get_weather(city='Paris', days=2), get_time()]<|tool_call_end|>",
        "",
        [("get_weather", {"city": "Paris", "days": 2}), ("get_time", {})],
    ),
    ("lfm2", "<|tool_call_start|>[1 + 2]<|tool_call_end|>", "<|tool_call_start|>[1 + 2]<|tool_call_end|>", []),
    (
        "granite",
        '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]',
        "",
        [("get_weather", {"city": "Paris"}), ("get_time", {})],
    ),
]


@pytest.mark.parametrize(("name", "fmt"), DETECTED.items())
def test_the_family_is_detected_from_the_template(name: str, fmt: str) -> None:
    template = ChatTemplate((TEMPLATES / f"{name}.jinja").read_text(), "<s>", "</s>")
    assert template.native_calls and template.tool_format == fmt
    prompt = template.render((ChatMessage("user", "Weather?"),), TOOLS)
    assert "get_weather" in prompt and "Weather of a city" in prompt  # shown by the template or described by herd
    # DeepSeek R1's and V3.1's templates leave the tools to the caller
    assert template.knows_tools == (fmt not in ("deepseek-r1", "deepseek-v3"))
    if not template.knows_tools:
        assert toolformat.DS_CALLS + toolformat.DS_CALL in prompt  # described in the family's own syntax


@pytest.mark.parametrize("name", DESCRIBED)
def test_other_syntaxes_fall_back_to_hermes_tags_described_in_the_prompt(name: str) -> None:
    template = ChatTemplate((TEMPLATES / f"{name}.jinja").read_text(), "<s>", "</s>")
    assert not template.knows_tools and not template.native_calls and template.tool_format == "hermes"
    prompt = template.render((ChatMessage("user", "Weather?"),), TOOLS)
    assert "<tool_call>" in prompt and '"name": "get_weather"' in prompt


def collect(pieces: list[Piece]) -> tuple[str, list[tuple[str, str]], dict[int, str], dict[int, str]]:
    content = "".join(p.text for p in pieces if isinstance(p, Content))
    ends = [(p.name, p.arguments) for p in pieces if isinstance(p, CallEnd)]
    starts = {p.index: p.name for p in pieces if isinstance(p, CallStart)}
    streamed: dict[int, str] = {}
    for p in pieces:
        if isinstance(p, CallArguments):
            streamed[p.index] = streamed.get(p.index, "") + p.fragment
    return content, ends, starts, streamed


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_calls_parse_whole_and_at_every_split(fmt: str, text: str, content: str, calls: list[Any]) -> None:
    whole_content, whole_calls = parse_all(text, fmt)
    assert whole_content == content
    assert [(c.name, json.loads(c.arguments)) for c in whole_calls] == calls
    for size in range(1, len(text) + 1):
        parser = ToolCallParser()
        pieces: list[Piece] = []
        for at in range(0, len(text), size):
            pieces += parser.feed(text[at : at + size], fmt if at == 0 else None)
        pieces += parser.finish()
        got_content, ends, starts, streamed = collect(pieces)
        assert got_content == content, size
        assert [(n, json.loads(a)) for n, a in ends] == calls, size
        assert list(starts.values()) == [n for n, _ in calls]
        # The arguments streamed are exactly the arguments of the finished call.
        assert [streamed.get(i, "") for i in range(len(ends))] == [a for _, a in ends], size


def test_the_format_is_taken_only_before_any_text() -> None:
    parser = ToolCallParser()
    assert parser.feed("[TOOL_CALLS]get_time[ARGS]{}", "mistral-args") != []
    assert parser.calls == 1
    late = ToolCallParser()
    late.feed("Hi ")
    pieces = late.feed("[TOOL_CALLS]x[ARGS]{}", "mistral-args") + late.finish()
    assert late.calls == 0 and "".join(p.text for p in pieces if isinstance(p, Content)) == "[TOOL_CALLS]x[ARGS]{}"


# ---- grammars ------------------------------------------------------------------------------------------------


def tokenize(vocab: Any, text: str, special: bool = False) -> list[int]:
    """`special`: markers that are special tokens of the vocabulary become those tokens."""
    data = text.encode()
    buf = (L.llama_token * (len(data) + 8))()
    n = L.llama_tokenize(vocab, data, len(data), buf, len(buf), False, special)
    assert n >= 0
    return list(buf[:n])


def accepts(vocab: Any, gbnf: str, text: str) -> bool:
    """Whether llama.cpp's grammar sampler lets `text` through, token by token, and then lets generation end."""
    sampler = L.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    assert sampler, "llama.cpp refused the grammar"
    try:
        for token in [*tokenize(vocab, text), L.llama_vocab_eos(vocab)]:
            cell = (L.llama_token_data * 1)(L.llama_token_data(token, 0.0, 0.0))
            array = L.llama_token_data_array(cell, 1, -1, False)
            L.llama_sampler_apply(sampler, ctypes.byref(array))
            if cell[0].logit == float("-inf"):
                return False
            if token != L.llama_vocab_eos(vocab):
                L.llama_sampler_accept(sampler, token)
        return True
    finally:
        L.llama_sampler_free(sampler)


def constraint(parallel: bool, names: tuple[str, ...] = ("get_weather", "get_time")) -> ToolConstraint:
    specs = [s for s in SPECS if s.name in names]
    return ToolConstraint(tuple(s.name for s in specs), argument_rules(specs, "tools"), parallel, forced=True)


# One call of get_weather in each family's syntax, as a forced call writes it.
CALL_TEXT: dict[str, str] = {
    "hermes": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>',
    "llama3": '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    "mistral": '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1B2c3D4e"}]',
    "mistral-args": '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
    "gpt-oss": "<|channel|>analysis<|message|>The user wants the weather.<|end|><|start|>assistant"
    '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}',
    "qwen3-coder": "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n"
    "</tool_call>",
    "glm": "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>",
    "command-r": "<|START_THINKING|>Call it.<|END_THINKING|><|START_ACTION|>[\n"
    '    {"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Paris"}}\n]<|END_ACTION|>',
    "deepseek-r1": f"{DS_CALLS}{DS_CALL}function{DS_SEP}get_weather\n```json\n"
    f'{{"city": "Paris"}}\n```{DS_CALL_END}{DS_CALLS_END}',
    "deepseek-v3": f'{DS_CALLS}{DS_CALL}get_weather{DS_SEP}{{"city": "Paris"}}{DS_CALL_END}{DS_CALLS_END}',
    "nemotron-v2": '<TOOLCALL>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</TOOLCALL>',
    "apriel": '<tool_calls>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_calls>',
    "minimax-m1": '<tool_calls>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_calls>',
    "firefunction-v2": ' functools[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    "minimax-m2": '<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris</parameter>\n'
    "</invoke>\n</minimax:tool_call>",
    "deepseek-v32": f'<{DSML}function_calls>\n<{DSML}invoke name="get_weather">\n<{DSML}parameter name="city" '
    f'string="true">Paris</{DSML}parameter>\n</{DSML}invoke>\n</{DSML}function_calls>',
    "deepseek-v4": f'<{DSML}tool_calls>\n<{DSML}invoke name="get_weather">\n<{DSML}parameter name="city" '
    f'string="true">Paris</{DSML}parameter>\n</{DSML}invoke>\n</{DSML}tool_calls>',
    "functionary-v3.1": '<function=get_weather>{"city": "Paris"}</function>',
    "functionary-v3.2": 'get_weather\n{"city": "Paris"}',
    "kimi-k2": "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>"
    '{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>',
    "seed-oss": "<seed:tool_call>\n<function=get_weather>\n<parameter=city>Paris</parameter>\n</function>\n"
    "</seed:tool_call>",
    "gemma4": '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:2}<tool_call|>',
    "lfm2": "<|tool_call_start|>[get_weather(city='Paris', days=2)]<|tool_call_end|>",
    "granite": '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
}
PARALLEL = [(fmt, text.removeprefix(content)) for fmt, text, content, calls in CASES if len(calls) > 1]


@pytest.mark.parametrize("fmt", toolformat.FORMATS)
def test_forced_grammar_takes_the_familys_call_and_nothing_else(vocab: Any, fmt: toolformat.ToolFormat) -> None:
    grammar = toolformat.grammar(fmt, constraint(False, ("get_weather",)), TOOLS)
    assert grammar.triggers == ()
    assert parse_all(CALL_TEXT[fmt], fmt)[1][0].name == "get_weather"  # the parser reads what the grammar writes
    assert accepts(vocab, grammar.gbnf, CALL_TEXT[fmt])
    assert not accepts(vocab, grammar.gbnf, "The weather is nice.")
    for other, text in CALL_TEXT.items():
        if other != fmt:
            assert not accepts(vocab, grammar.gbnf, text), other
    # Arguments are held to the schema (XML-like families: the parameter names).
    key = ('"city"', '"town"')
    if fmt in ("qwen3-coder", "seed-oss", "glm", "minimax-m2", "deepseek-v32", "deepseek-v4", "gemma4", "lfm2"):
        key = {
            "glm": ("<arg_key>city", "<arg_key>town"),
            "qwen3-coder": ("=city>", "=town>"),
            "seed-oss": ("=city>", "=town>"),
            "gemma4": ("city:", "town:"),
            "lfm2": ("city=", "town="),
        }.get(fmt, ('name="city"', 'name="town"'))
    assert not accepts(vocab, grammar.gbnf, CALL_TEXT[fmt].replace(*key))
    # A tool that was not offered cannot be called.
    assert not accepts(vocab, grammar.gbnf, CALL_TEXT[fmt].replace("get_weather", "get_wether"))


@pytest.mark.parametrize(("fmt", "text"), PARALLEL, ids=[f for f, _ in PARALLEL])
def test_parallel_grammar_takes_several_calls(vocab: Any, fmt: toolformat.ToolFormat, text: str) -> None:
    assert accepts(vocab, toolformat.grammar(fmt, constraint(True), TOOLS).gbnf, text)
    assert not accepts(vocab, toolformat.grammar(fmt, constraint(False), TOOLS).gbnf, text)


@pytest.mark.parametrize("fmt", toolformat.FORMATS)
def test_auto_grammars_are_lazy_on_the_familys_opener(vocab: Any, fmt: toolformat.ToolFormat) -> None:
    c = constraint(False)
    grammar = toolformat.grammar(fmt, ToolConstraint(c.names, c.rules, False, forced=False), TOOLS)
    names = tuple(f"{name}\n" for name in c.names) if fmt == "functionary-v3.2" else ()
    assert grammar.triggers == (*toolformat.TRIGGERS[fmt], *names)
    # The call from its trigger on is what the lazy grammar takes (the engine feeds it from the trigger).
    call = CALL_TEXT[fmt]
    assert accepts(vocab, grammar.gbnf, call[min(i for t in grammar.triggers if (i := call.find(t)) >= 0) :])
    patterns = [f"[\\s\\S]*?({re.escape(t)}[\\s\\S]*)".encode() for t in grammar.triggers]
    c_patterns = (ctypes.c_char_p * len(patterns))(*patterns)
    no_tokens = (L.llama_token * 1)()
    sampler = L.llama_sampler_init_grammar_lazy_patterns(
        vocab, grammar.gbnf.encode(), b"root", c_patterns, len(patterns), no_tokens, 0
    )
    assert sampler
    L.llama_sampler_free(sampler)


# Families whose own tokenizer is among llama.cpp's vocab-only GGUFs (the model the grammar constrains tokenizes
# the call with its special tokens: `<tool_call>`, `<|python_tag|>`, `<|START_ACTION|>`...).
FAMILY_VOCABS = {
    "hermes": "qwen2",
    "qwen3-coder": "qwen35",
    "llama3": "llama-bpe",
    "command-r": "command-r",
    "gemma4": "gemma-4",
}


@pytest.fixture(scope="module")
def family_vocab() -> Iterator[Callable[[str], Any]]:
    loaded: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in loaded:
            params = L.llama_model_default_params()
            params.vocab_only = True
            model = L.llama_model_load_from_file(str(llama_sources.vocab_path(name)).encode(), params)
            assert model, name
            loaded[name] = model
        return L.llama_model_get_vocab(loaded[name])

    yield get
    for model in loaded.values():
        L.llama_model_free(model)


@pytest.mark.parametrize(("fmt", "vocab_name"), FAMILY_VOCABS.items())
def test_forced_grammar_on_the_familys_own_vocabulary(
    family_vocab: Callable[[str], Any], fmt: toolformat.ToolFormat, vocab_name: str
) -> None:
    vocab = family_vocab(vocab_name)
    gbnf = toolformat.grammar(fmt, constraint(False, ("get_weather",)), TOOLS).gbnf
    assert parses(vocab, gbnf)
    assert accepts(vocab, gbnf, CALL_TEXT[fmt])
    assert not accepts(vocab, gbnf, "The weather is nice.")
    # The call as the model writes it, its markers as single special tokens where the vocabulary has them.
    tokens = tokenize(vocab, CALL_TEXT[fmt], special=True)
    sampler = L.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    try:
        for token in tokens:
            cell = (L.llama_token_data * 1)(L.llama_token_data(token, 0.0, 0.0))
            array = L.llama_token_data_array(cell, 1, -1, False)
            L.llama_sampler_apply(sampler, ctypes.byref(array))
            assert cell[0].logit != float("-inf"), (fmt, token)
            L.llama_sampler_accept(sampler, token)
    finally:
        L.llama_sampler_free(sampler)
