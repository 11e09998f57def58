"""Reasoning output: the splitter over every split of canonical outputs (R1, Qwen 3, gpt-oss harmony), the pieces
the reply translators make of it, and a request's effort reaching real templates (llama.cpp's collection)."""

from __future__ import annotations

import msgspec
import pytest
from herd import reasoning
from herd.api.translate import ollama_requests, openai_requests, responses_requests
from herd.api.translate.ollama_replies import OllamaReply
from herd.api.translate.openai_chat_replies import ChatAssembler
from herd.api.translate.reasoning import OutputParser
from herd.api.translate.tool_json import CallEnd, Content, Piece, Reasoning
from herd.api.wire import ollama as ollama_wire
from herd.api.wire import openai as openai_wire
from herd.api.wire import responses as responses_wire
from herd.inference import ChatMessage, Finished, TokenDelta, Tool, ToolCall, Usage
from herd.workers.template import ChatTemplate

from tests import llama_sources

TEMPLATES = llama_sources.templates_dir()
ASK = (ChatMessage("user", "What is 2+2?"),)

# (mode the worker names, the model's whole output, reasoning, answer, calls)
CANONICAL = [
    pytest.param(  # Qwen 3: the model opens the block itself
        "think",
        "<think>\nThe user asks for 2+2.\nThat is 4.\n</think>\n\nThe answer is 4.",
        "The user asks for 2+2.\nThat is 4.",
        "The answer is 4.",
        [],
        id="qwen3",
    ),
    pytest.param(  # DeepSeek R1: the generation prompt opened <think>
        "thinking",
        "Okay, 2+2 is 4.  \nSimple.\n</think>\n\n4",
        "Okay, 2+2 is 4.  \nSimple.",
        "4",
        [],
        id="r1",
    ),
    pytest.param(  # a thinking model that answers without a block: all of it is the answer
        "think",
        "No <think> here, just < and > signs.",
        "",
        "No <think> here, just < and > signs.",
        [],
        id="no-block",
    ),
    pytest.param(  # generation cut off while reasoning
        "thinking",
        "Let me count: 1, 2, 3 </thi",
        "Let me count: 1, 2, 3 </thi",
        "",
        [],
        id="cut-off",
    ),
    pytest.param(  # gpt-oss: analysis then final
        "harmony",
        "<|channel|>analysis<|message|>User asks 2+2. Answer 4.<|end|><|start|>assistant<|channel|>final<|message|>"
        "2 + 2 = 4.",
        "User asks 2+2. Answer 4.",
        "2 + 2 = 4.",
        [],
        id="gpt-oss",
    ),
    pytest.param(  # gpt-oss: analysis then a call (the request offered tools)
        "harmony",
        "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary "
        'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}',
        "Need weather.",
        "",
        [("get_weather", '{"city": "Paris"}')],
        id="gpt-oss-call",
    ),
    pytest.param(  # Command R7B: the plan, then the response
        "command-r",
        "<|START_THINKING|>The user asks 2+2.<|END_THINKING|>The answer is <4>.",
        "The user asks 2+2.",
        "The answer is <4>.",
        [],
        id="command-r",
    ),
    pytest.param(  # Command A: the generation prompt opened the block
        "command-r-thinking",
        "2+2 is 4.<|END_THINKING|><|START_ACTION|>[\n"
        '    {"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Paris"}}\n]<|END_ACTION|>',
        "2+2 is 4.",
        "",
        [("get_weather", '{"city": "Paris"}')],
        id="command-r-inside-call",
    ),
    pytest.param(  # Seed-OSS
        "seed",
        "<seed:think>Add them: 4.</seed:think>\n2 + 2 = 4.",
        "Add them: 4.",
        "2 + 2 = 4.",
        [],
        id="seed",
    ),
    pytest.param(  # Seed-OSS without a block: all answer
        "seed",
        "<seed:thin> is not the marker",
        "",
        "<seed:thin> is not the marker",
        [],
        id="seed-no-block",
    ),
    pytest.param(  # Gemma 4: the thought channel
        "gemma4",
        "<|channel>thought\nSimple sum.<channel|>4",
        "Simple sum.",
        "4",
        [],
        id="gemma4",
    ),
]


def delta(text: str, first: bool, mode: str | None, tool_format: str | None = None) -> TokenDelta:
    return TokenDelta(0, text, 1, reasoning=mode if first else None, tool_format=tool_format if first else None)


def run(mode: str, text: str, size: int, tools: bool = False, tool_format: str | None = None) -> list[Piece]:
    parser = OutputParser(tools)
    chunks = [text[i : i + size] for i in range(0, len(text), size)]
    pieces = [p for i, chunk in enumerate(chunks) for p in parser.feed(delta(chunk, i == 0, mode, tool_format))]
    return [*pieces, *parser.finish()]


@pytest.mark.parametrize(("mode", "output", "thought", "answer", "calls"), CANONICAL)
def test_every_split_size_gives_the_same_reasoning_and_answer(
    mode: str, output: str, thought: str, answer: str, calls: list[tuple[str, str]]
) -> None:
    tool_format = "command-r" if mode.startswith("command-r") and calls else None
    for size in range(1, len(output) + 1):
        pieces = run(mode, output, size, tools=bool(calls), tool_format=tool_format)
        assert "".join(p.text for p in pieces if isinstance(p, Reasoning)) == thought, size
        assert "".join(p.text for p in pieces if isinstance(p, Content)) == answer, size
        assert [(p.name, p.arguments) for p in pieces if isinstance(p, CallEnd)] == calls, size
        kinds = [type(p) for p in pieces if not isinstance(p, CallEnd)]
        if Reasoning in kinds and Content in kinds:  # all reasoning comes before the answer
            assert kinds.index(Content) > max(i for i, k in enumerate(kinds) if k is Reasoning), size


def test_think_block_then_a_hermes_call() -> None:
    output = '<think>I should call it.</think>\n<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>'
    for size in range(1, len(output) + 1):
        pieces = run("think", output, size, tools=True)
        assert "".join(p.text for p in pieces if isinstance(p, Reasoning)) == "I should call it."
        assert [(p.name, p.arguments) for p in pieces if isinstance(p, CallEnd)] == [("f", '{"a": 1}')]
        assert "".join(p.text for p in pieces if isinstance(p, Content)).strip() == ""


def test_a_model_that_does_not_reason_passes_text_through() -> None:
    text = "<think>is just text here</think> for a model whose template does not reason"
    pieces = run(None, text, 3)  # type: ignore[arg-type]
    assert "".join(p.text for p in pieces if isinstance(p, Content)) == text
    assert not any(isinstance(p, Reasoning) for p in pieces)


def test_think_false_drops_the_reasoning_and_counts_its_tokens() -> None:
    parser = OutputParser(False, reasoning=False)
    pieces = parser.feed(delta("<think>a b", True, "think")) + parser.feed(delta(" c</think>ok", False, None))
    assert pieces == [Content("ok")]
    assert parser.reasoning_tokens == 1


def test_chat_completion_carries_reasoning_content_and_reasoning_tokens() -> None:
    chat = ChatAssembler("r", "m", 0, 1, tools=False, logprobs=False, include_usage=True)
    chunks = [*chat.feed(0, delta("<think>hmm", True, "think")), *chat.feed(0, delta("</think>Four.", False, None))]
    chunks += chat.feed(0, Finished(2, "stop", Usage(5, 2)))
    assert [c.choices[0].delta.reasoning_content for c in chunks if c.choices[0].delta.reasoning_content] == ["hmm"]
    message = chat.completion().choices[0].message
    assert (message.reasoning_content, message.content) == ("hmm", "Four.")
    details = chat.usage().completion_tokens_details
    assert not isinstance(details, type(None)) and getattr(details, "reasoning_tokens", None) == 1


def test_ollama_lines_carry_thinking() -> None:
    reply = OllamaReply("chat", "m", False, False)
    lines = [*reply.feed(delta("hmm</think>", True, "thinking")), *reply.feed(delta("Four.", False, None))]
    assert [
        (line.message.thinking, line.message.content) for line in lines if isinstance(line, ollama_wire.ChatResponse)
    ] == [
        ("hmm", ""),
        (ollama_wire.UNSET, "Four."),
    ]
    whole = OllamaReply("generate", "m", False, False)
    whole.feed(delta("hmm</think>Four.", True, "thinking"))
    done = whole.whole(Finished(1, "stop", Usage(5, 1)), 1)
    assert isinstance(done, ollama_wire.GenerateResponse) and (done.thinking, done.response) == ("hmm", "Four.")


# ---- the template side: format, start, effort ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("Qwen-Qwen3-0.6B.jinja", "think"),
        ("llama-cpp-deepseek-r1.jinja", "think"),
        ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "think"),
        ("openai-gpt-oss-120b.jinja", "harmony"),
        ("CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja", "command-r"),
        ("Cohere2MoE.jinja", "command-r"),
        ("ByteDance-Seed-OSS.jinja", "seed"),
        ("google-gemma-4-31B-it.jinja", "gemma4"),
        ("CohereForAI-c4ai-command-r-plus-tool_use.jinja", None),
        ("Qwen-Qwen2.5-7B-Instruct.jinja", None),
        ("meta-llama-Llama-3.1-8B-Instruct.jinja", None),
    ],
)
def test_format_is_read_from_the_template(name: str, fmt: str | None) -> None:
    assert load(name).reasoning == fmt


def load(name: str) -> ChatTemplate:
    return ChatTemplate((TEMPLATES / name).read_text(), "<s>", "</s>")


def test_qwen3_enable_thinking_follows_the_request() -> None:
    template = load("Qwen-Qwen3-0.6B.jinja")
    off = template.render(ASK, effort="off")
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert reasoning.start(template.reasoning, off) == "think"  # the empty block is closed: the answer follows
    for effort in (None, "on", "high"):
        on = template.render(ASK, effort=effort)  # type: ignore[arg-type]
        assert on.endswith("<|im_start|>assistant\n") and reasoning.start(template.reasoning, on) == "think"


def test_r1_prompt_opens_think_so_the_output_starts_inside_it() -> None:
    for name in ("llama-cpp-deepseek-r1.jinja", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"):
        template = load(name)
        prompt = template.render(ASK)
        assert prompt.rstrip().endswith("<think>"), name
        assert reasoning.start(template.reasoning, prompt) == "thinking"
    distill = load("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja")  # it closes the block when thinking is off
    assert distill.render(ASK, effort="off").endswith("<think>\n</think>")


def test_gpt_oss_reasoning_effort_reaches_the_system_message() -> None:
    template = load("openai-gpt-oss-120b.jinja")
    assert "Reasoning: medium" in template.render(ASK)
    for effort in ("low", "medium", "high"):
        assert f"Reasoning: {effort}" in template.render(ASK, effort=effort)  # type: ignore[arg-type]
    assert reasoning.start(template.reasoning, template.render(ASK)) == "harmony"


def test_a_template_that_does_not_reason_gets_no_variables() -> None:
    template = ChatTemplate(None, "<s>", "</s>")  # ChatML, SmolLM2's shape
    assert template.reasoning is None
    assert template.render(ASK, effort="high") == template.render(ASK)
    assert reasoning.start(None, template.render(ASK)) is None


@pytest.mark.parametrize(
    ("asked", "effort"),
    [(None, None), (True, "on"), (False, "off"), ("high", "high"), ("none", "off"), ("minimal", "low"), ("x", None)],
)
def test_effort_of_requests(asked: bool | str | None, effort: str | None) -> None:
    assert reasoning.effort(asked) == effort


def test_command_r_blocks_follow_the_request() -> None:
    r7b = load("CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja")
    assert r7b.render(ASK, effort="off").endswith("<|START_THINKING|><|END_THINKING|>")  # closed: answer follows
    on = r7b.render(ASK)
    assert reasoning.start(r7b.reasoning, on) == "command-r" and not on.endswith("<|END_THINKING|>")
    command_a = load("Cohere2MoE.jinja")
    assert reasoning.start(command_a.reasoning, command_a.render(ASK)) == "command-r-thinking"  # opened for it
    assert reasoning.start(command_a.reasoning, command_a.render(ASK, effort="off")) == "command-r"


def test_seed_thinking_off_is_a_budget_of_zero() -> None:
    seed = load("ByteDance-Seed-OSS.jinja")
    assert "thinking budget is 0" not in seed.render(ASK)
    off = seed.render(ASK, effort="off")
    assert "thinking budget is 0" in off and reasoning.start(seed.reasoning, off) == "seed"


def test_gemma4_thinking_follows_the_request() -> None:
    gemma = load("google-gemma-4-31B-it.jinja")
    assert gemma.render(ASK, effort="off").endswith("<|channel>thought\n<channel|>")  # an empty, closed block
    assert "<|think|>" in gemma.render(ASK, effort="on")


def test_reasoning_markers_that_are_control_tokens_are_shown() -> None:
    vocab = {"<|channel>": [7], "<channel|>": [8], "<seed:think>": [9], "</seed:think>": [10, 11]}
    assert reasoning.marker_tokens("gemma4", lambda text, _: vocab.get(text, [1, 2])) == {7, 8}
    assert reasoning.marker_tokens("seed", lambda text, _: vocab.get(text, [1, 2])) == {9}
    assert reasoning.marker_tokens(None, lambda text, _: [1]) == frozenset()


# ---- reasoning sent back in the history ----------------------------------------------------------------------

CALLED = (
    ChatMessage("user", "Weather in Paris?"),
    ChatMessage(
        "assistant",
        "",
        tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),),
        reasoning="Need the tool.",
    ),
    ChatMessage("tool", "sunny", tool_call_id="call_1"),
)
WEATHER = (Tool("get_weather", "Weather of a city", '{"type": "object", "properties": {"city": {"type": "string"}}}'),)


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("Qwen-Qwen3-0.6B.jinja", "<think>\nNeed the tool.\n</think>"),
        ("openai-gpt-oss-120b.jinja", "<|channel|>analysis<|message|>Need the tool.<|end|>"),
        ("google-gemma-4-31B-it.jinja", "<|channel>thought\nNeed the tool.\n<channel|><|tool_call>call:get_weather"),
        ("CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja", "<|START_THINKING|>Need the tool.<|END_THINKING|>"),
    ],
)
def test_an_assistant_turns_reasoning_reaches_templates_that_show_it(name: str, shown: str) -> None:
    assert shown in load(name).render(CALLED, WEATHER)
    without = (CALLED[0], msgspec.structs.replace(CALLED[1], reasoning=""), CALLED[2])
    assert "Need the tool." not in load(name).render(without, WEATHER)


def test_request_translators_carry_reasoning_sent_back() -> None:
    openai_msg = msgspec.json.decode(
        b'{"role": "assistant", "content": "4", "reasoning_content": "2+2"}',
        type=openai_wire.ChatCompletionMessageParam,
    )
    assert openai_requests._message(openai_msg, 0).reasoning == "2+2"
    ollama_msg = msgspec.json.decode(
        b'{"role": "assistant", "content": "4", "thinking": "2+2"}', type=ollama_wire.Message
    )
    assert ollama_requests._message(ollama_msg, 0).reasoning == "2+2"
    items = msgspec.json.decode(
        b'[{"type": "message", "role": "user", "content": "2+2?"},'
        b'{"type": "reasoning", "content": [{"type": "reasoning_text", "text": "add"}]},'
        b'{"type": "message", "role": "assistant", "content": "4"},'
        b'{"type": "reasoning", "content": [{"type": "reasoning_text", "text": "call"}]},'
        b'{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}]',
        type=list[responses_wire.InputItem],
    )
    checked = [responses_requests._checked(item, i, "resp_1") for i, item in enumerate(items)]
    got = responses_requests.messages(None, checked)
    assert [(m.role, m.content, m.reasoning) for m in got] == [
        ("user", "2+2?", ""),
        ("assistant", "4", "add"),
        ("assistant", "", "call"),
    ]
