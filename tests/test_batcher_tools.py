"""A worker whose model speaks Mistral's tool syntax (Devstral's real template), in process with a scripted engine:
the grammar it samples with is in that syntax, the first delta names it, and the API's parser reads the call."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

from herd.api.grammar.schema import ToolSpec
from herd.api.grammar.tools import argument_rules
from herd.api.translate.tools import CallEnd, ToolCallParser
from herd.inference import (
    ChatMessage,
    GenerationRequest,
    Grammar,
    SamplingParams,
    StreamEvent,
    TokenDelta,
    Tool,
    ToolConstraint,
)
from herd.workers.batcher import Batcher
from herd.workers.protocol import Sampler
from herd.workers.template import ChatTemplate

from tests import llama_sources
from tests.fake_engine import ScriptedEngine

TEMPLATE = (llama_sources.templates_dir() / "unsloth-mistral-Devstral-Small-2507.jinja").read_text()
WEATHER = Tool("get_weather", "Weather of a city", '{"type": "object", "properties": {"city": {"type": "string"}}}')
MESSAGES = (ChatMessage("user", "Weather in Paris?"),)
CALL = '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'


class GrammarEngine(ScriptedEngine):
    """Records the grammar each sampler was made with."""

    def __init__(self, script: dict[str, str]) -> None:
        super().__init__(script, max_seqs=2, n_ctx_seq=8192, n_batch=512)
        self.chat_template = TEMPLATE
        self.bos_text = "<s>"
        self.grammars: list[Grammar | None] = []

    def new_sampler(self, params: SamplingParams, grammar: Grammar | None = None, seed_offset: int = 0) -> Sampler:
        self.grammars.append(grammar)
        return super().new_sampler(params, grammar, seed_offset)


async def run(engine: GrammarEngine, req: GenerationRequest) -> list[StreamEvent]:
    log: list[StreamEvent] = []
    batcher = Batcher(engine, "w1", lambda events, _: log.extend(e for _, e in events), 1000, 512, prefill_budget=512)
    thread = ThreadPoolExecutor(max_workers=1)
    batcher.start(thread)
    try:
        await asyncio.wait_for(batcher.run(req), 60)
    finally:
        await batcher.stop()
        thread.shutdown()
    return log


async def test_a_forced_call_in_the_models_syntax_reaches_the_api_parser() -> None:
    prompt = ChatTemplate(TEMPLATE, "<s>", "", adds_bos=True).render(MESSAGES, (WEATHER,))
    engine = GrammarEngine({prompt: CALL})
    rules = argument_rules([ToolSpec(WEATHER.name, json.loads(WEATHER.parameters))], "tools")
    req = GenerationRequest(
        id="r",
        model="m",
        messages=MESSAGES,
        sampling=SamplingParams(temperature=0.0),
        tools=(WEATHER,),
        tool_constraint=ToolConstraint(("get_weather",), rules, forced=True),
    )
    log = await run(engine, req)
    (grammar,) = engine.grammars
    assert grammar is not None and grammar.triggers == ()
    assert grammar.gbnf.startswith("root ::= tc-one\n") and '"[TOOL_CALLS]" (tc-call-0)' in grammar.gbnf
    deltas = [e for e in log if isinstance(e, TokenDelta)]
    assert deltas[0].tool_format == "mistral-args" and all(d.tool_format is None for d in deltas[1:])
    assert "".join(d.text for d in deltas) == CALL
    parser = ToolCallParser()
    pieces = [p for d in deltas for p in parser.feed(d.text, d.tool_format)] + parser.finish()
    assert [(p.name, p.arguments) for p in pieces if isinstance(p, CallEnd)] == [("get_weather", '{"city": "Paris"}')]


async def test_without_tools_no_syntax_is_named_and_auto_is_lazy() -> None:
    prompt = ChatTemplate(TEMPLATE, "<s>", "", adds_bos=True).render(MESSAGES)
    engine = GrammarEngine({prompt: "Sunny."})
    log = await run(engine, GenerationRequest(id="p", model="m", messages=MESSAGES))
    assert engine.grammars == [None]
    assert all(e.tool_format is None for e in log if isinstance(e, TokenDelta))

    prompt = ChatTemplate(TEMPLATE, "<s>", "", adds_bos=True).render(MESSAGES, (WEATHER,))
    engine = GrammarEngine({prompt: "Sunny."})
    rules = argument_rules([ToolSpec(WEATHER.name, json.loads(WEATHER.parameters))], "tools")
    constraint = ToolConstraint(("get_weather",), rules, forced=False)
    req = GenerationRequest(id="a", model="m", messages=MESSAGES, tools=(WEATHER,), tool_constraint=constraint)
    log = await run(engine, req)
    (grammar,) = engine.grammars
    assert grammar is not None and grammar.triggers == ("[TOOL_CALLS]",)
    assert next(e.tool_format for e in log if isinstance(e, TokenDelta)) == "mistral-args"
