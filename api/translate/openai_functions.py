"""Chat Completions' legacy `functions` / `function_call` (before tools existed) -> the same request with tools.

Requests: `functions` become `tools`, `function_call` ("none", "auto" or {"name"}) becomes `tool_choice`, and only one
call is made (the legacy shape has no list). In the history an assistant message's `function_call` becomes a tool
call and a `function` message its result, paired by an id made up here. The reply side (openai_chat_replies) then
writes `message.function_call` / `delta.function_call` and finish_reason "function_call" instead of tool calls.
"""

from __future__ import annotations

import msgspec
from herd.api.wire import openai as wire
from herd.errors import InvalidRequest


def uses_functions(body: wire.ChatCompletionRequest) -> bool:
    return body.functions is not None


def as_tools(body: wire.ChatCompletionRequest) -> wire.ChatCompletionRequest:
    """`body` with its legacy fields turned into their tool equivalents (unchanged when it has none)."""
    if body.functions is None:
        if body.function_call is not None:
            raise InvalidRequest("function_call needs functions", param="function_call")
        if any(m.role == "function" or m.function_call is not None for m in body.messages):
            return msgspec.structs.replace(body, messages=_messages(body.messages))
        return body
    if body.tools is not None:
        raise InvalidRequest("send either functions or tools, not both", param="functions")
    if not body.functions:
        raise InvalidRequest("functions must not be empty", param="functions")
    choice: str | wire.ChatCompletionNamedToolChoice | None
    if isinstance(body.function_call, wire.NamedFunction):
        if body.function_call.name not in {f.name for f in body.functions}:
            raise InvalidRequest(
                f"function_call names {body.function_call.name!r}, which is not in functions",
                param="function_call.name",
            )
        choice = wire.ChatCompletionNamedToolChoice(function=body.function_call)
    else:
        choice = body.function_call
    return msgspec.structs.replace(
        body,
        tools=[wire.ChatCompletionTool(function=f) for f in body.functions],
        tool_choice=choice,
        parallel_tool_calls=False,
        functions=None,
        function_call=None,
        messages=_messages(body.messages),
    )


def _messages(messages: list[wire.ChatCompletionMessageParam]) -> list[wire.ChatCompletionMessageParam]:
    out, last_call = [], None
    for i, m in enumerate(messages):
        if m.function_call is not None:
            if m.role != "assistant":
                raise InvalidRequest("only assistant messages carry a function_call", param=f"messages[{i}].role")
            last_call = f"call_fn{i}"
            call = wire.ChatCompletionMessageToolCall(id=last_call, function=m.function_call)
            m = msgspec.structs.replace(m, function_call=None, tool_calls=[call])
        elif m.role == "function":
            if last_call is None:
                raise InvalidRequest(
                    "a function message must follow an assistant function_call", param=f"messages[{i}].role"
                )
            m = msgspec.structs.replace(m, role="tool", tool_call_id=last_call)
        out.append(m)
    return out
