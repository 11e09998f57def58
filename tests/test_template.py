"""Chat templates: every template of llama.cpp's collection renders through herd, adapted where it refuses a shape.

The templates are llama.cpp's `models/templates/*.jinja`, read from the llama.cpp sources vendored in the installed
llama-cpp-python's sdist (tests/llama_sources.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from herd.errors import InvalidRequest
from herd.inference import ChatMessage, Tool, ToolCall
from herd.workers.template import ChatTemplate

from tests import llama_sources

TEMPLATES = sorted(llama_sources.templates_dir().glob("*.jinja"))
# Before issue 16, 57 of these rendered the plain conversation and 42 the tool conversation.
COLLECTION_SIZE = 70

WEATHER = Tool(
    "get_weather",
    "Current weather of a city",
    '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}',
)
CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')

PLAIN = (
    ChatMessage("system", "You are terse."),
    ChatMessage("user", "Hello there"),
    ChatMessage("assistant", "Hi, how can I help?"),
    ChatMessage("user", "Name a colour"),
)
# Tools offered, an assistant call, its result, the assistant's answer and a follow-up question.
TOOL_TURNS = (
    ChatMessage("system", "You are terse."),
    ChatMessage("user", "Weather in Paris?"),
    ChatMessage("assistant", "", tool_calls=(CALL,)),
    ChatMessage("tool", "18C and sunny", tool_call_id="call_1"),
    ChatMessage("assistant", "It is 18C and sunny."),
    ChatMessage("user", "And tomorrow?"),
)
# The model is to answer the tool result (the most common turn of a tool loop).
AFTER_RESULT = TOOL_TURNS[:4]
# The user speaks right after a tool result (Mistral's alternation rule refuses this as it is).
USER_AFTER_RESULT = (*TOOL_TURNS[:4], ChatMessage("user", "And tomorrow?"))


def load(path: Path) -> ChatTemplate:
    return ChatTemplate(path.read_text(), "<s>", "</s>")


def test_the_whole_collection_is_here() -> None:
    assert len(TEMPLATES) == COLLECTION_SIZE


@pytest.mark.parametrize("path", TEMPLATES, ids=[p.stem for p in TEMPLATES])
def test_every_template_renders_every_conversation(path: Path) -> None:
    template = load(path)
    plain = template.render(PLAIN)
    for text in ("You are terse.", "Hello there", "Hi, how can I help?", "Name a colour"):
        assert text in plain
    for conversation in (TOOL_TURNS, AFTER_RESULT, USER_AFTER_RESULT):
        prompt = template.render(conversation, (WEATHER,))
        # The tool offered, the call made, and its result are all visible to the model.
        for text in ("get_weather", "Current weather of a city", "Paris", "18C and sunny"):
            assert text in prompt, (path.stem, text)
    assert "And tomorrow?" in template.render(USER_AFTER_RESULT, (WEATHER,))


def test_gemma_refuses_a_system_role_so_it_goes_into_the_first_user_turn() -> None:
    source = (TEMPLATES[0].parent / "google-gemma-2-2b-it.jinja").read_text()
    assert "System role not supported" in source
    template = ChatTemplate(source, "<bos>", "<eos>")
    assert not template.caps.system
    assert template.render(PLAIN) == (
        "<bos><start_of_turn>user\nYou are terse.\n\nHello there<end_of_turn>\n"
        "<start_of_turn>model\nHi, how can I help?<end_of_turn>\n"
        "<start_of_turn>user\nName a colour<end_of_turn>\n<start_of_turn>model\n"
    )


def test_mistral_nemo_gets_nine_character_ids_and_an_answer_before_the_next_user_turn() -> None:
    template = load(TEMPLATES[0].parent / "mistralai-Mistral-Nemo-Instruct-2407.jinja")
    assert template.caps.alternation and template.caps.short_ids
    assert template.caps.after_result == "empty_answer"
    rows = template.rows(USER_AFTER_RESULT, (WEATHER,))
    assert [r["role"] for r in rows] == ["system", "user", "assistant", "tool", "assistant", "user"]
    call_id = rows[2]["tool_calls"][0]["id"]
    assert len(call_id) == 9 and call_id.isalnum() and rows[3]["tool_call_id"] == call_id
    prompt = template.render(USER_AFTER_RESULT, (WEATHER,))
    assert '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "' + call_id in prompt
    # The template prints a result's content as it is (results are usually JSON text).
    assert '[TOOL_RESULTS]{"content": 18C and sunny, "call_id": "' + call_id + '"}[/TOOL_RESULTS]</s>' in prompt


def test_ministral_takes_a_user_turn_after_a_result_inside_the_result() -> None:
    template = load(TEMPLATES[0].parent / "mistralai-Ministral-3-14B-Reasoning-2512.jinja")
    assert template.caps.after_result == "into_result"
    rows = template.rows(USER_AFTER_RESULT, (WEATHER,))
    assert rows[-1] == {"role": "tool", "content": "18C and sunny\n\nAnd tomorrow?", "tool_call_id": "call_1"}


def test_mistral_without_repair_refuses_these_conversations() -> None:
    """The adaptations are needed: the same rows given as they are make the template raise."""
    template = load(TEMPLATES[0].parent / "mistralai-Mistral-Nemo-Instruct-2407.jinja")
    with pytest.raises(Exception, match="alternate"):
        template._render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert "[INST]a\n\nb[/INST]" in template.render((ChatMessage("user", "a"), ChatMessage("user", "b")))


def test_hugging_face_extensions() -> None:
    source = (
        "{% set seen = [] %}{% set d = {} %}"
        "{% for m in messages %}{% if m.role == 'system' %}({{ m.content }}){% continue %}{% endif %}"
        "{{ seen.append(m.content) or '' }}{% set _ = d.update({'k': 1}) %}"
        "{% generation %}[{{ m.content }}]{% endgeneration %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{% endfor %}{{ seen | tojson }}{{ {'b': 1, 'a': '<é>'} | tojson(indent=1, sort_keys=true) }}"
        "{{ d | tojson(separators=(',', ':')) }}{{ strftime_now('%Y') | length }}"
    )
    out = ChatTemplate(source, "", "").render(PLAIN)
    assert out == (
        '(You are terse.)[Hello there][Hi, how can I help?]["Hello there", "Hi, how can I help?"]'
        '{\n "a": "<é>",\n "b": 1\n}{"k":1}4'
    )


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__base__ }}{{ raise_exception.__globals__ }}{{ messages.append.__self__ }}",
        "{{ cycler.__init__.__globals__.os }}",
    ],
)
def test_a_template_cannot_reach_python(source: str) -> None:
    try:
        out = ChatTemplate(source, "", "").render(PLAIN)
    except InvalidRequest:
        return
    assert out == ""  # unsafe attributes are undefined: nothing of Python's shows


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{{ 'x' * 100000000 }}",
        "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}",
    ],
)
def test_a_template_cannot_run_away(source: str) -> None:
    with pytest.raises(InvalidRequest, match=r"bound|longer than"):
        ChatTemplate(source, "", "").render(PLAIN)


def test_a_bos_the_template_writes_is_dropped_when_the_tokenizer_adds_one() -> None:
    source = (TEMPLATES[0].parent / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text()
    written = ChatTemplate(source, "<|begin_of_text|>", "<|eot_id|>").render(PLAIN)
    assert written.startswith("<|begin_of_text|><|start_header_id|>system")
    added = ChatTemplate(source, "<|begin_of_text|>", "<|eot_id|>", adds_bos=True).render(PLAIN)
    assert added == written.removeprefix("<|begin_of_text|>")


# Moved from tests/test_units.py (the ChatML fallback and the sandbox, one case each).


def test_chatml_fallback_and_developer_role() -> None:
    t = ChatTemplate(None, "", "")
    text = t.render([ChatMessage(role="developer", content="be brief"), ChatMessage(role="user", content="hi")])
    assert text == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_template_raise_exception_is_a_400() -> None:
    t = ChatTemplate("{{ raise_exception('roles must alternate') }}", "", "")
    with pytest.raises(InvalidRequest, match="roles must alternate"):
        t.render([ChatMessage(role="user", content="hi")])


def test_template_cannot_reach_python() -> None:
    t = ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}", "", "")
    with pytest.raises(InvalidRequest):
        t.render([ChatMessage(role="user", content="hi")])
