"""OpenAI chat, completions and embeddings requests -> the internal requests (the way back: openai_*replies.py)."""

from __future__ import annotations

import json
import time

from herd import reasoning
from herd.api.grammar.schema import JSON_OBJECT_GRAMMAR, GrammarCache, ToolSpec, schema_grammar
from herd.api.grammar.tools import argument_rules
from herd.api.translate.openai_functions import as_tools
from herd.api.wire import openai as wire
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


def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def _sampling(body: wire.ChatCompletionRequest | wire.CompletionRequest) -> SamplingParams:
    # OpenAI's defaults: temperature 1, top_p 1. top_p 0 means "only the most likely token": greedy.
    temp = 1.0 if body.temperature is None else body.temperature
    top_p = body.top_p
    if top_p == 0.0:
        temp, top_p = 0.0, 1.0
    return SamplingParams(
        temperature=temp,
        top_p=1.0 if top_p is None else top_p,
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=_logit_bias(body.logit_bias),
    )


def _logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    if not bias:
        return ()
    out = []
    for key, value in bias.items():
        if not key.isdigit():
            raise InvalidRequest(f"logit_bias keys must be token ids; got {key!r}", param="logit_bias")
        out.append((int(key), float(value)))
    return tuple(out)


def _content(message: wire.ChatCompletionMessageParam, index: int) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for j, part in enumerate(message.content):
        if part.type != "text" or part.text is None:
            raise InvalidRequest(
                f"content part type '{part.type}' is not supported by this model; send text parts",
                param=f"messages[{index}].content[{j}].type",
            )
        texts.append(part.text)
    return "".join(texts)


def _message(m: wire.ChatCompletionMessageParam, i: int) -> ChatMessage:
    if m.role == "function":  # as_tools made legacy function results tool messages; one left is out of place
        raise InvalidRequest("a function message needs functions in the request", param=f"messages[{i}].role")
    if m.role == "tool" and not m.tool_call_id:
        raise InvalidRequest("a tool message needs the tool_call_id it answers", param=f"messages[{i}].tool_call_id")
    calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ())
    thought = (m.reasoning_content or "") if m.role == "assistant" else ""
    return ChatMessage(
        role=m.role,
        content=_content(m, i),
        name=m.name,
        tool_calls=calls,
        tool_call_id=m.tool_call_id,
        reasoning=thought,
    )


def _tools(body: wire.ChatCompletionRequest, grammars: GrammarCache) -> tuple[tuple[Tool, ...], ToolConstraint | None]:
    """The tools shown to the model and the constraint that enforces tool_choice (none without tools)."""
    choice = body.tool_choice
    if not body.tools:
        if choice is not None and choice != "none":
            raise InvalidRequest("tool_choice is only allowed when tools are given", param="tool_choice")
        return (), None
    if choice == "none":
        return (), None  # the model is not to call tools: it does not see them
    tools = body.tools
    if isinstance(choice, wire.ChatCompletionNamedToolChoice):
        tools = [t for t in body.tools if t.function.name == choice.function.name]
        if not tools:
            raise InvalidRequest(
                f"tool_choice names '{choice.function.name}', which is not among the tools", param="tool_choice"
            )
    # Several calls in one turn only when asked for outright: small models given the choice repeat a call until
    # max_tokens (llama-server, too, defaults parallel_tool_calls to false).
    parallel = body.parallel_tool_calls is True and not isinstance(choice, wire.ChatCompletionNamedToolChoice)
    specs = [ToolSpec(t.function.name, t.function.parameters or {}) for t in tools]
    key = json.dumps(["tool-args", [[s.name, s.parameters] for s in specs]], sort_keys=True)
    rules = grammars.get_or_compile(key, lambda: argument_rules(specs, "tools"))
    # auto: the model may answer in text; the grammar takes over once it opens a call.
    forced = choice not in (None, "auto")
    shown = tuple(
        Tool(t.function.name, t.function.description or "", json.dumps(t.function.parameters or {})) for t in body.tools
    )
    return shown, ToolConstraint(tuple(s.name for s in specs), rules, parallel, forced)


def _response_format(fmt: wire.ResponseFormat | None, grammars: GrammarCache) -> Grammar | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return Grammar(JSON_OBJECT_GRAMMAR)
    if fmt.json_schema is None or fmt.json_schema.schema is None:
        raise InvalidRequest(
            "response_format json_schema needs json_schema.schema", param="response_format.json_schema"
        )
    schema = fmt.json_schema.schema
    key = json.dumps(["schema", schema], sort_keys=True)
    return Grammar(grammars.get_or_compile(key, lambda: schema_grammar(schema, "response_format.json_schema.schema")))


def chat_request(body: wire.ChatCompletionRequest, request_id: str, grammars: GrammarCache) -> GenerationRequest:
    body = as_tools(body)
    messages = tuple(_message(m, i) for i, m in enumerate(body.messages))
    tools, constraint = _tools(body, grammars)
    grammar = None
    if constraint is None or not constraint.forced:
        # A forced tool call wins over response_format; with `auto` the text before a call follows no schema.
        grammar = _response_format(body.response_format, grammars)
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs set to true", param="top_logprobs")
    return GenerationRequest(
        id=request_id,
        model=body.model,
        messages=messages,
        sampling=_sampling(body),
        max_tokens=body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens,
        stop=_stop(body.stop),
        tools=tools,
        grammar=grammar,
        tool_constraint=constraint,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        n=body.n or 1,
        reasoning=reasoning.effort(body.reasoning_effort),
        enqueued_at=time.time(),
    )


def completion_requests(body: wire.CompletionRequest, request_id: str) -> list[GenerationRequest]:
    """One GenerationRequest per prompt (a list prompt gives n choices per entry)."""
    n = body.n or 1
    if body.best_of not in (None, 1, n):
        raise InvalidRequest("best_of other than n is not supported; omit it", param="best_of")
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    sampling = _sampling(body)
    return [
        GenerationRequest(
            id=request_id if i == 0 else f"{request_id}-{i}",
            model=body.model,
            prompt=prompt,
            sampling=sampling,
            max_tokens=16 if body.max_tokens is None else body.max_tokens,  # OpenAI's default for /v1/completions
            stop=_stop(body.stop),
            logprobs=body.logprobs,
            n=n,
            suffix=body.suffix,
            enqueued_at=time.time(),
        )
        for i, prompt in enumerate(prompts)
    ]


def embedding_request(body: wire.EmbeddingCreateParams, request_id: str) -> EmbeddingRequest:
    raw = body.input
    inputs: list[str | tuple[int, ...]]
    if isinstance(raw, str):
        inputs = [raw]
    elif all(isinstance(item, int) for item in raw):
        inputs = [tuple(item for item in raw if isinstance(item, int))]  # one input given as token ids
    elif all(isinstance(item, str) for item in raw):
        inputs = [item for item in raw if isinstance(item, str)]
    elif all(isinstance(item, list) for item in raw):
        inputs = [tuple(item) for item in raw if isinstance(item, list)]
    else:
        raise InvalidRequest(
            "input must be a string, a list of strings, a list of token ids or a list of token-id lists",
            param="input",
        )
    return EmbeddingRequest(
        id=request_id,
        model=body.model,
        inputs=tuple(inputs),
        dimensions=body.dimensions,
        enqueued_at=time.time(),
    )
