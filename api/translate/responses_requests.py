"""OpenAI Responses requests -> the internal GenerationRequest chat uses, and the input items herd stores.

Input items become chat messages: a message (roles user / assistant / system / developer, content a string or
input_text / output_text parts), a function_call (an assistant turn's tool call), a function_call_output (a tool
message), an item_reference (an item of an earlier stored response, resolved by the caller). Tools, tool_choice
and text.format compile to the same grammars chat's tools and response_format do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Literal

import msgspec
from herd import reasoning
from herd.api.grammar.schema import JSON_OBJECT_GRAMMAR, GrammarCache, ToolSpec, schema_grammar
from herd.api.grammar.tools import argument_rules
from herd.api.wire import responses as wire
from herd.errors import InvalidRequest
from herd.inference import ChatMessage, GenerationRequest, Grammar, SamplingParams, Tool, ToolCall, ToolConstraint

LOGPROBS_INCLUDE = "message.output_text.logprobs"
_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = ("input_text", "output_text", "text")
_TOOL_CHOICES = ("auto", "required", "none")


def item_id(kind: str, response_rid: str, slot: str) -> str:
    """`msg_<rid>_o0`: output item 0 of response `resp_<rid>` (`i3`: its input item 3). An item_reference is
    resolved by reading the response its id names; the ids are opaque to clients."""
    return f"{kind}_{response_rid}_{slot}"


def response_of_item(item: str) -> str | None:
    """The response id an item id of herd's names (None for an id herd did not make)."""
    parts = item.split("_")
    if len(parts) != 3 or not parts[1]:
        return None
    return f"resp_{parts[1]}"


def references(body: wire.ResponseCreateParams) -> list[str]:
    """The item ids the input refers to, which the caller reads from storage before translating."""
    if not isinstance(body.input, list):
        return []
    refs = []
    for i, item in enumerate(body.input):
        if item.type == "item_reference":
            if not item.id:
                raise InvalidRequest("an item_reference needs the id of the item", param=f"input[{i}].id")
            refs.append(item.id)
    return refs


def _text(content: str | list[wire.InputContent] | None, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type not in _TEXT_PARTS or part.text is None:
            raise InvalidRequest(
                f"content part type '{part.type}' is not supported by this model; send input_text parts",
                param=f"{param}[{j}].type",
            )
        texts.append(part.text)
    return "".join(texts)


def input_items(
    body: wire.ResponseCreateParams, resolved: Mapping[str, wire.InputItem], rid: str
) -> list[wire.InputItem]:
    """The request's input as items with ids (references replaced by what they name), checked field by field."""
    raw = body.input
    if raw is None:
        raw = []
    if isinstance(raw, str):
        return [wire.InputItem(type="message", id=item_id("msg", rid, "i0"), role="user", content=raw)]
    items = []
    for i, item in enumerate(raw):
        if item.type == "item_reference":
            found = resolved.get(item.id or "")
            if found is None:
                raise InvalidRequest(f"Item with id '{item.id}' not found.", param=f"input[{i}].id")
            items.append(found)
            continue
        items.append(_checked(item, i, rid))
    return items


def _checked(item: wire.InputItem, i: int, rid: str) -> wire.InputItem:
    if item.type == "message":
        if item.role not in _ROLES:
            raise InvalidRequest(
                f"role must be one of {', '.join(_ROLES)}; got {item.role!r}", param=f"input[{i}].role"
            )
        text = _text(item.content, f"input[{i}].content")
        own = item.id or item_id("msg", rid, f"i{i}")
        return wire.InputItem(type="message", id=own, role=item.role, content=text, status="completed")
    if item.type == "function_call":
        for name in ("call_id", "name", "arguments"):
            if getattr(item, name) is None:
                raise InvalidRequest(f"a function_call item needs {name}", param=f"input[{i}].{name}")
        own = item.id or item_id("fc", rid, f"i{i}")
        return msgspec.structs.replace(item, id=own, status="completed")
    if item.type == "reasoning":  # an earlier turn's reasoning, sent back: its text goes to the next assistant turn
        parts = item.content if isinstance(item.content, list) else []
        kept = [wire.InputContent("reasoning_text", p.text) for p in parts if p.type == "reasoning_text" and p.text]
        return wire.InputItem(type="reasoning", id=item.id or item_id("rs", rid, f"i{i}"), content=kept or None)
    if item.type == "function_call_output":
        if not item.call_id:
            raise InvalidRequest("a function_call_output needs the call_id it answers", param=f"input[{i}].call_id")
        output = _text(item.output, f"input[{i}].output")
        own = item.id or item_id("fco", rid, f"i{i}")
        return wire.InputItem(type="function_call_output", id=own, call_id=item.call_id, output=output)
    raise InvalidRequest(
        f"input item type '{item.type}' is not supported; send message, function_call, function_call_output, "
        "reasoning or item_reference items",
        param=f"input[{i}].type",
    )


def messages(instructions: str | None, history: list[wire.InputItem]) -> tuple[ChatMessage, ...]:
    """Chat messages of the instructions and checked items (earlier turns first); calls join their assistant turn."""
    out: list[ChatMessage] = [ChatMessage(role="system", content=instructions)] if instructions else []
    thought = ""  # reasoning items' text, for the assistant turn that follows them
    for item in history:
        if item.type == "function_call":
            call = ToolCall(item.call_id or "", item.name or "", item.arguments or "")
            last = out[-1] if out else None
            if last is not None and last.role == "assistant" and last.tool_calls and not thought:
                out[-1] = msgspec.structs.replace(last, tool_calls=(*last.tool_calls, call))
            else:
                out.append(ChatMessage(role="assistant", content="", tool_calls=(call,), reasoning=thought))
                thought = ""
        elif item.type == "function_call_output":
            out.append(ChatMessage(role="tool", content=_text(item.output, "output"), tool_call_id=item.call_id))
        elif item.type == "reasoning":
            thought += "".join(p.text or "" for p in item.content or () if not isinstance(p, str))
        else:
            role = item.role if item.role in _ROLES else "user"
            said, thought = (thought, "") if role == "assistant" else ("", thought)
            out.append(ChatMessage(role=role, content=_text(item.content, "content"), reasoning=said))  # type: ignore[arg-type]
    return tuple(out)


ToolChoice = Literal["auto", "required", "none"] | wire.ToolChoiceParam


def tool_choice(body: wire.ResponseCreateParams) -> ToolChoice:
    choice = body.tool_choice
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICES:
            raise InvalidRequest(
                f"tool_choice must be one of auto, required, none or a function; got {choice!r}", param="tool_choice"
            )
        return choice  # type: ignore[return-value]
    if choice.type != "function":
        raise InvalidRequest(
            f"tool_choice type '{choice.type}' is not supported; only function tools can run here",
            param="tool_choice.type",
        )
    if not choice.name:
        raise InvalidRequest("tool_choice of type function needs the function's name", param="tool_choice.name")
    return choice


def function_tools(body: wire.ResponseCreateParams) -> list[wire.ToolParam]:
    """The tools, each a function; a built-in tool (web_search, file_search, ...) is refused by name."""
    tools = body.tools or []
    for i, tool in enumerate(tools):
        if tool.type != "function":
            raise InvalidRequest(
                f"tool type '{tool.type}' is not supported by this server; only function tools can run here",
                param=f"tools[{i}].type",
            )
        if not tool.name:
            raise InvalidRequest("a function tool needs a name", param=f"tools[{i}].name")
    return tools


def _tools(body: wire.ResponseCreateParams, grammars: GrammarCache) -> tuple[tuple[Tool, ...], ToolConstraint | None]:
    """The tools shown to the model and the constraint that enforces tool_choice (as chat does, see openai_requests):
    the worker writes it in its model's own call syntax."""
    choice = tool_choice(body)
    tools = function_tools(body)
    if not tools:
        if choice not in ("auto", "none"):
            raise InvalidRequest("tool_choice is only allowed when tools are given", param="tool_choice")
        return (), None
    if choice == "none":
        return (), None
    allowed = tools
    if isinstance(choice, wire.ToolChoiceParam):
        allowed = [t for t in tools if t.name == choice.name]
        if not allowed:
            raise InvalidRequest(
                f"tool_choice names '{choice.name}', which is not among the tools", param="tool_choice"
            )
    parallel = body.parallel_tool_calls is True and not isinstance(choice, wire.ToolChoiceParam)
    specs = [ToolSpec(t.name or "", t.parameters or {}) for t in allowed]
    key = json.dumps(["tool-args", [[s.name, s.parameters] for s in specs]], sort_keys=True)
    rules = grammars.get_or_compile(key, lambda: argument_rules(specs, "tools"))
    shown = tuple(Tool(t.name or "", t.description or "", json.dumps(t.parameters or {})) for t in tools)
    return shown, ToolConstraint(tuple(s.name for s in specs), rules, parallel, forced=choice != "auto")


def _text_format(body: wire.ResponseCreateParams, grammars: GrammarCache) -> Grammar | None:
    fmt = body.text.format if body.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return Grammar(JSON_OBJECT_GRAMMAR)
    if not fmt.name:
        raise InvalidRequest("text.format of type json_schema needs a name", param="text.format.name")
    if fmt.schema is None:
        raise InvalidRequest("text.format of type json_schema needs a schema", param="text.format.schema")
    schema = fmt.schema
    key = json.dumps(["schema", schema], sort_keys=True)
    return Grammar(grammars.get_or_compile(key, lambda: schema_grammar(schema, "text.format.schema")))


def drop_oldest(messages: tuple[ChatMessage, ...]) -> tuple[ChatMessage, ...] | None:
    """The conversation without its oldest item (truncation auto); the instructions stay, a tool result whose call
    went goes with it; None when only the last message is left."""
    head = [m for m in messages if m.role == "system"][:1] if messages and messages[0].role == "system" else []
    rest = list(messages[len(head) :])
    if len(rest) <= 1:
        return None
    rest = rest[1:]
    while len(rest) > 1 and rest[0].role == "tool":
        rest = rest[1:]
    return (*head, *rest)


def wants_logprobs(body: wire.ResponseCreateParams) -> bool:
    return LOGPROBS_INCLUDE in (body.include or [])


def generation_request(
    body: wire.ResponseCreateParams,
    request_id: str,
    history: list[wire.InputItem],
    grammars: GrammarCache,
    durable: bool = False,
) -> GenerationRequest:
    """`history`: the earlier turns (from previous_response_id) followed by this request's checked input items."""
    if not history:
        raise InvalidRequest("input must not be empty", param="input")
    tools, constraint = _tools(body, grammars)
    # A forced tool call wins over text.format; with `auto` the text before a call follows the format.
    grammar = _text_format(body, grammars) if constraint is None or not constraint.forced else None
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    if top_p == 0.0:  # only the most likely token: greedy
        temperature, top_p = 0.0, 1.0
    return GenerationRequest(
        id=request_id,
        model=body.model,
        messages=messages(body.instructions, history),
        sampling=SamplingParams(temperature=temperature, top_p=top_p, seed=body.seed),
        max_tokens=body.max_output_tokens,
        tools=tools,
        grammar=grammar,
        tool_constraint=constraint,
        logprobs=(body.top_logprobs or 0) if wants_logprobs(body) else None,
        reasoning=reasoning.effort(body.reasoning.effort if body.reasoning is not None else None),
        enqueued_at=time.time(),
        durable=durable,
    )
