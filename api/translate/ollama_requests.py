"""Ollama chat, generate and embed requests -> the internal requests (the same ones /v1 uses)."""

from __future__ import annotations

import json
import re
import time

from herd import reasoning
from herd.api.grammar.schema import JSON_OBJECT_GRAMMAR, GrammarCache, ToolSpec, schema_grammar
from herd.api.grammar.tools import argument_rules
from herd.api.wire import ollama as wire
from herd.errors import InvalidRequest
from herd.inference import (
    ChatMessage,
    EmbeddingRequest,
    GenerationRequest,
    Grammar,
    SamplingParams,
    Tool,
    ToolCall,
    ToolConstraint,
)
from msgspec.structs import replace

# Ollama's defaults for the options a request leaves out (api/types.go DefaultOptions).
TEMPERATURE = 0.8


TOP_K = 40


TOP_P = 0.9


MIN_P = 0.0


REPEAT_PENALTY = 1.1


REPEAT_LAST_N = 64


def resolve_model(name: str, known: dict[str, int]) -> str | None:
    """The served name `name` means: Ollama's tag defaults to `latest`, so `m` and `m:latest` are one model."""
    if name in known:
        return name
    base, _, tag = name.rpartition(":")
    if not base or "/" in tag:  # no tag (a ':' before a '/' belongs to a registry host's port)
        alias = f"{name}:latest"
    elif tag == "latest":
        alias = base
    else:
        return None
    return alias if alias in known else None


def not_found_message(name: str) -> str:
    return f"model '{name}' not found, try pulling it first"


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _options(options: wire.Options | None, n_ctx: int) -> tuple[SamplingParams, int | None, tuple[str, ...]]:
    """Ollama options -> sampler settings, max_tokens and stop strings, with Ollama's defaults and edge values."""
    o = options or wire.Options()
    temperature = max(0.0, _or(o.temperature, TEMPERATURE))  # llama.cpp samples greedily at <= 0
    top_p = _or(o.top_p, TOP_P)
    if top_p <= 0.0:
        temperature, top_p = 0.0, 1.0  # only the most likely token survives: greedy
    repeat_last_n = int(_or(o.repeat_last_n, REPEAT_LAST_N))
    sampling = SamplingParams(
        temperature=temperature,
        top_p=min(top_p, 1.0),
        top_k=max(0, int(_or(o.top_k, TOP_K))),  # <= 0 turns top-k off, as in llama.cpp
        min_p=min(max(_or(o.min_p, MIN_P), 0.0), 1.0),
        typical_p=min(max(_or(o.typical_p, 1.0), 0.0), 1.0),  # 1 (Ollama's default) turns it off
        seed=o.seed if o.seed is not None and o.seed >= 0 else None,  # Ollama's -1: a random seed
        presence_penalty=_or(o.presence_penalty, 0.0),
        frequency_penalty=_or(o.frequency_penalty, 0.0),
        repeat_penalty=_or(o.repeat_penalty, REPEAT_PENALTY),
        repeat_last_n=n_ctx if repeat_last_n < 0 else repeat_last_n,  # -1: the whole context
    )
    # num_predict -1 (forever) and -2 (fill the context) both end when the context is full; so does 0 (no limit).
    max_tokens = o.num_predict if o.num_predict is not None and o.num_predict > 0 else None
    stop = (o.stop,) if isinstance(o.stop, str) else tuple(o.stop or ())
    return sampling, max_tokens, stop


def _think(model: str, think: bool | str | None, thinks: bool) -> reasoning.Effort | None:
    """`think` as an effort; a 400 when it asks a model whose template cannot reason (`thinks`) to think, as Ollama."""
    if isinstance(think, str) and think and think not in ("low", "medium", "high"):
        message = f'invalid think value: "{think}" (must be "high", "medium", "low", true, or false)'
        raise InvalidRequest(message, param="think")
    if think not in (None, False, "") and not thinks:
        raise InvalidRequest(f'"{model}" does not support thinking', param="think")
    return reasoning.effort(think)


def _format(format_: wire.Format | None, grammars: GrammarCache) -> Grammar | None:
    """`format`: "json", or a JSON schema (compiled here, a 400 when it is bad, as for OpenAI's response_format)."""
    if format_ in (None, ""):
        return None
    if format_ == "json":
        return Grammar(JSON_OBJECT_GRAMMAR)
    if isinstance(format_, str):
        raise InvalidRequest(f'invalid format: expected "json" or a JSON schema, got {format_!r}', param="format")
    key = json.dumps(["schema", format_], sort_keys=True)
    return Grammar(grammars.get_or_compile(key, lambda: schema_grammar(format_, "format")))


def _logprobs(flag: bool | None, top: int | None) -> int | None:
    return (top or 0) if flag else None


def _tools(
    tools: list[wire.Tool] | None, choice: str | None, grammars: GrammarCache
) -> tuple[tuple[Tool, ...], ToolConstraint | None]:
    """As in Ollama the model may call a tool (the grammar takes over once it opens a call); herd's `tool_choice`
    extension can also require a call or rule one out."""
    if not tools or choice == "none":
        return (), None
    specs = [ToolSpec(t.function.name, t.function.parameters or {}) for t in tools]
    key = json.dumps(["tool-args", [[s.name, s.parameters] for s in specs]], sort_keys=True)
    rules = grammars.get_or_compile(key, lambda: argument_rules(specs, "tools"))
    shown = tuple(
        Tool(t.function.name, t.function.description or "", json.dumps(t.function.parameters or {})) for t in tools
    )
    return shown, ToolConstraint(tuple(s.name for s in specs), rules, False, choice == "required")


def _message(m: wire.Message, i: int) -> ChatMessage:
    if m.images:
        raise InvalidRequest("this model does not support images", param=f"messages[{i}].images")
    calls = tuple(
        ToolCall(
            c.id if isinstance(c.id, str) else f"call_{i}_{j}",
            c.function.name,
            json.dumps(c.function.arguments),
        )
        for j, c in enumerate(m.tool_calls or ())
    )
    call_id = m.tool_call_id if isinstance(m.tool_call_id, str) else None
    thought = m.thinking if m.role == "assistant" and isinstance(m.thinking, str) else ""
    return ChatMessage(role=m.role, content=m.content or "", tool_calls=calls, tool_call_id=call_id, reasoning=thought)


def chat_request(
    body: wire.ChatRequest, model: str, n_ctx: int, request_id: str, grammars: GrammarCache, thinks: bool = False
) -> GenerationRequest:
    """`model` is the resolved served name; `body.messages` is not empty (an empty list only loads the model).
    `thinks`: the model's chat template reasons (herd.reasoning.detect), so `think` may ask for it."""
    effort = _think(body.model, body.think, thinks)
    sampling, max_tokens, stop = _options(body.options, n_ctx)
    tools, constraint = _tools(body.tools, body.tool_choice, grammars)
    # A format constrains the whole answer; with tools too, the format wins (as in Ollama, which then cannot call).
    grammar = _format(body.format, grammars)
    return GenerationRequest(
        id=request_id,
        model=model,
        messages=tuple(_message(m, i) for i, m in enumerate(body.messages)),
        sampling=sampling,
        max_tokens=max_tokens,
        stop=stop,
        tools=tools,
        grammar=grammar,
        tool_constraint=constraint,
        logprobs=_logprobs(body.logprobs, body.top_logprobs),
        reasoning=effort,
        fit_context=True,  # Ollama generates until the context is full rather than refusing a large num_predict
        enqueued_at=time.time(),
    )


def generate_request(
    body: wire.GenerateRequest, model: str, n_ctx: int, request_id: str, grammars: GrammarCache, thinks: bool = False
) -> GenerationRequest:
    """`/api/generate` with a non-empty prompt (an empty one only loads the model).

    Not raw: `system` and `prompt` become chat messages so the model's own chat template applies, and the prompt
    plus the reply come back as token ids in `context`; a `context` sent back is put before the new turn as those
    very tokens (Ollama detokenizes and retokenizes it; the tokens are the same or better). Raw: the prompt goes
    to the model as-is, and, as in Ollama, `system`, `template` and `context` play no part.
    """
    effort = _think(body.model, body.think, thinks)
    if body.images:
        raise InvalidRequest("this model does not support images", param="images")
    sampling, max_tokens, stop = _options(body.options, n_ctx)
    base = GenerationRequest(
        id=request_id,
        model=model,
        sampling=sampling,
        max_tokens=max_tokens,
        stop=stop,
        grammar=_format(body.format, grammars),
        logprobs=_logprobs(body.logprobs, body.top_logprobs),
        suffix=body.suffix or None,  # the worker refuses it for a model without fill-in-the-middle tokens
        reasoning=effort,
        fit_context=True,
        enqueued_at=time.time(),
    )
    if body.raw or body.suffix:  # fill in the middle works on the text as given, like raw
        return replace(base, prompt=body.prompt)
    context = tuple(body.context or ())
    if any(t < 0 for t in context):
        raise InvalidRequest("context holds negative token ids", param="context")
    if body.template:
        text = render_template(body.template, body.system, body.prompt)
        return replace(base, prompt=text, context_tokens=context, return_tokens=True)
    system = (ChatMessage(role="system", content=body.system),) if body.system else ()
    messages = (*system, ChatMessage(role="user", content=body.prompt))
    return replace(base, messages=messages, context_tokens=context, return_tokens=True)


# A Go template is a program; only its simplest form, placeholders with optional whitespace trimming, is cheap to
# honour without a Go template engine. Everything else is refused rather than rendered wrong.
_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)


_FIELDS = {".System", ".Prompt", ".Response"}


def render_template(template: str, system: str, prompt: str) -> str:
    """The prompt text of a placeholder-only Go template: everything before `{{ .Response }}` (Ollama's rule)."""
    values = {".System": system, ".Prompt": prompt}
    parts: list[str] = []
    pos, trim_next = 0, False
    for match in _ACTION.finditer(template):
        trim_before, action, trim_after = match.groups()
        if action not in _FIELDS:
            raise InvalidRequest(
                f"template: only {{{{ .System }}}}, {{{{ .Prompt }}}} and {{{{ .Response }}}} are supported, "
                f"not {{{{ {action} }}}}",
                param="template",
            )
        text = template[pos : match.start()]
        text = text.lstrip() if trim_next else text
        parts.append(text.rstrip() if trim_before else text)
        if action == ".Response":
            return "".join(parts)
        parts.append(values[action])
        pos, trim_next = match.end(), bool(trim_after)
    tail = template[pos:]
    parts.append(tail.lstrip() if trim_next else tail)
    return "".join(parts)


def embed_request(inputs: list[str], model: str, truncate: bool, dimensions: int | None, rid: str) -> EmbeddingRequest:
    return EmbeddingRequest(
        id=rid, model=model, inputs=tuple(inputs), truncate=truncate, dimensions=dimensions, enqueued_at=time.time()
    )
