"""Gemma 4, LFM2 and Granite 3.x tool calls with llama.cpp's real templates: which templates speak them (Granite's and
LFM2's only describe the syntax), earlier calls and results in the history the template's way, and the calls the
templates write read back by herd's parsers."""

from __future__ import annotations

import json

import pytest
from herd import toolsyntax
from herd.api.translate.tools import parse_all
from herd.inference import ChatMessage, Tool, ToolCall
from herd.workers.template import ChatTemplate

from tests import llama_sources

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


def test_gemma_values_round_trip() -> None:
    args = {"q": 'say "hi", {ok}', "n": -1.5, "flags": [True, None], "inner": {"k": "v"}}
    text = (
        '<|tool_call>call:search{q:<|"|>say "hi", {ok}<|"|>,n:-1.5,flags:[true,null],inner:{k:<|"|>v<|"|>}}<tool_call|>'
    )
    assert [(c.name, json.loads(c.arguments)) for c in parse_all(text, "gemma4")[1]] == [("search", args)]
