"""The Responses translators in process: requests -> GenerationRequest (and the 400s naming the field), internal
events -> the Response and its stream events (order, numbering, determinism, the SDK's strict types), listing."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from herd.api.grammar.schema import GrammarCache
from herd.api.routes.responses_history import listed, output_items, page
from herd.api.translate.responses_replies import ResponseAssembler, initial, sse_event, stored
from herd.api.translate.responses_requests import (
    drop_oldest,
    generation_request,
    input_items,
    references,
    response_of_item,
)
from herd.api.translate.tool_json import TOOL_CLOSE, TOOL_OPEN
from herd.api.wire import responses as wire
from herd.errors import ErrorKind, InvalidRequest, Unavailable
from herd.inference import Failed, Finished, Started, TokenDelta, TokenLogprob, Usage
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
from pydantic import TypeAdapter

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
ITEMS: TypeAdapter[Any] = TypeAdapter(ResponseItem)
TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
RID = "0123456789abcdef01234567"


def body(**fields: Any) -> wire.ResponseCreateParams:
    return msgspec.convert({"model": "m", "input": "hi", **fields}, wire.ResponseCreateParams)


def translate(b: wire.ResponseCreateParams, resolved: dict[str, wire.InputItem] | None = None) -> Any:
    items = input_items(b, resolved or {}, RID)
    return generation_request(b, RID, items, GrammarCache())


def usage(prompt: int = 10, completion: int = 3, cached: int = 4) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)


def run(b: wire.ResponseCreateParams, events: list[Any]) -> tuple[ResponseAssembler, list[Any]]:
    assembler = ResponseAssembler.for_request(b, initial(b, f"resp_{RID}", 1700000000, None))
    out = assembler.opening()
    for event in events:
        out.extend(assembler.feed(event))
    return assembler, out


def as_json(event: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(msgspec.json.encode(event))
    return data


def test_string_input_is_one_user_message_after_the_instructions() -> None:
    req = translate(body(instructions="Be brief.", max_output_tokens=7, temperature=0.5, top_p=0.9, seed=3))
    assert [(m.role, m.content) for m in req.messages] == [("system", "Be brief."), ("user", "hi")]
    assert req.max_tokens == 7 and req.sampling.temperature == 0.5 and req.sampling.top_p == 0.9
    assert req.sampling.seed == 3 and req.id == RID and not req.durable


def test_items_become_chat_messages_with_tool_calls_joined_to_their_turn() -> None:
    items = [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me see."}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"x":1}'},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
    ]
    req = translate(body(input=items))
    roles = [m.role for m in req.messages]
    assert roles == ["developer", "user", "assistant", "assistant", "tool", "tool"]
    assert req.messages[1].content == "ab"
    assert [c.id for c in req.messages[3].tool_calls] == ["c1", "c2"]
    assert [(m.tool_call_id, m.content) for m in req.messages[4:]] == [("c1", "one"), ("c2", "two")]


def test_item_references_are_replaced_by_what_they_name() -> None:
    call = wire.InputItem(type="function_call", id=f"fc_{RID}_o0", call_id="c1", name="f", arguments="{}")
    b = body(input=[{"type": "item_reference", "id": call.id}, {"type": "function_call_output", "call_id": "c1"}])
    assert references(b) == [call.id] and response_of_item(call.id or "") == f"resp_{RID}"
    req = translate(b, {call.id or "": call})
    assert req.messages[0].tool_calls[0].name == "f" and req.messages[1].role == "tool"


def test_tools_tool_choice_and_text_format_compile_to_grammars() -> None:
    # Tools become a constraint the worker writes in its model's own call syntax (as chat's do).
    auto = translate(body(tools=TOOLS))
    assert auto.tool_constraint is not None and not auto.tool_constraint.forced and auto.grammar is None
    assert auto.tool_constraint.names == ("get_weather",) and "args-0" in auto.tool_constraint.rules
    assert auto.tools[0].name == "get_weather"
    forced = translate(body(tools=TOOLS, tool_choice={"type": "function", "name": "get_weather"}))
    assert forced.tool_constraint is not None and forced.tool_constraint.forced
    required = translate(body(tools=TOOLS, tool_choice="required", text={"format": {"type": "json_object"}}))
    assert required.tool_constraint is not None and required.tool_constraint.forced and required.grammar is None
    assert translate(body(tools=TOOLS, tool_choice="none")).tools == ()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    shaped = translate(body(text={"format": {"type": "json_schema", "name": "s", "schema": schema}}))
    assert shaped.grammar is not None and "root" in shaped.grammar.gbnf
    assert translate(body(text={"format": {"type": "json_object"}})).grammar is not None
    logprobs = translate(body(include=["message.output_text.logprobs"], top_logprobs=2))
    assert logprobs.logprobs == 2 and translate(body(top_logprobs=2)).logprobs is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search_preview"}]}, "tools[0].type"),
        ({"tools": [*TOOLS, {"type": "local_shell"}]}, "tools[1].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        ({"tool_choice": {"type": "mcp", "server_label": "x"}}, "tool_choice.type"),
        ({"tool_choice": {"type": "function"}}, "tool_choice.name"),
        ({"tool_choice": "any"}, "tool_choice"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0].type"),
        ({"input": [{"type": "web_search_call"}]}, "input[0].type"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": [{"type": "item_reference"}]}, "input[0].id"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    ],
)
def test_what_cannot_run_here_is_refused_naming_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        b = body(**fields)
        references(b)
        translate(b)
    assert refused.value.param == param


def test_a_text_stream_in_openai_order_validated_strictly() -> None:
    b = body(include=["message.output_text.logprobs"])
    lp = TokenLogprob(b"He", -0.5, ((b"He", -0.5), (b"Hi", -1.5)))
    events = [
        Started(0, "w", 10),
        TokenDelta(1, "He", 1, logprobs=(lp,)),
        TokenDelta(2, "llo", 1, logprobs=(TokenLogprob(b"llo", -0.1),)),
        Finished(3, "stop", usage()),
    ]
    assembler, out = run(b, events)
    kinds = [e.type for e in out]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in out] == list(range(len(out)))
    for event in out:
        EVENTS.validate_python(as_json(event), strict=True)
    final = Response.model_validate(as_json(assembler.response), strict=True)
    assert final.output_text == "Hello" and final.status == "completed" and final.completed_at is not None
    assert final.usage is not None and final.usage.input_tokens_details.cached_tokens == 4
    assert final.usage.total_tokens == 13
    assert [x.token for x in final.output[0].content[0].logprobs] == ["He", "llo"]  # type: ignore[union-attr]
    # The created event's response is a snapshot, not the object that went on changing.
    assert out[0].response.output == [] and out[0].response.status == "in_progress"


def test_a_background_response_starts_queued_and_goes_in_progress_when_a_worker_takes_it() -> None:
    b = body(background=True)
    _, out = run(b, [Started(0, "w", 10), TokenDelta(1, "x", 1), Finished(2, "length", usage())])
    assert [e.type for e in out[:2]] == ["response.created", "response.in_progress"]
    assert out[0].response.status == "queued"
    assert out[-1].type == "response.incomplete" and out[-1].response.status == "incomplete"
    assert out[-1].response.incomplete_details.reason == "max_output_tokens"
    assert out[-2].item.status == "incomplete"


def test_tool_calls_stream_as_argument_deltas_with_derived_ids() -> None:
    b = body(tools=TOOLS, tool_choice="required")
    call = f'{TOOL_OPEN}{{"name": "get_weather", "arguments": {{"city": "Paris"}}}}{TOOL_CLOSE}'
    deltas = [TokenDelta(i + 1, call[i : i + 7], 1) for i in range(0, len(call), 7)]
    assembler, out = run(b, [Started(0, "w", 10), *deltas, Finished(99, "stop", usage())])
    for event in out:
        EVENTS.validate_python(as_json(event), strict=True)
    args = "".join(e.delta for e in out if e.type == "response.function_call_arguments.delta")
    assert json.loads(args) == {"city": "Paris"}
    (item,) = assembler.response.output
    assert isinstance(item, wire.FunctionCall) and item.arguments == args and item.status == "completed"
    assert item.id == f"fc_{RID}_o0" and item.call_id == f"call_{RID}_o0"
    assert out[-1].type == "response.completed"


def test_replays_are_identical_so_a_resume_is_a_replay_that_skips() -> None:
    b = body(background=True)
    events = [Started(0, "w", 10), *(TokenDelta(i, f"t{i} ", 1) for i in range(1, 20)), Finished(20, "stop", usage())]
    first = [sse_event(e) for e in run(b, events)[1]]
    second = [sse_event(e) for e in run(b, events)[1]]
    strip = [f.split(b'"completed_at"')[0] for f in first]  # the completion time is the replay's own
    assert strip == [f.split(b'"completed_at"')[0] for f in second]
    assert all(f.startswith(b"event: response.") and b"\ndata: {" in f for f in first)


def test_a_worker_failure_and_a_cancel_end_the_stream() -> None:
    b = body(background=True)
    _, out = run(b, [Started(0, "w", 10), TokenDelta(1, "x", 1), Failed(2, ErrorKind.ENGINE_ERROR, "boom")])
    assert out[-1].type == "response.failed" and out[-1].response.error.message == "boom"
    EVENTS.validate_python(as_json(out[-1]), strict=True)
    assembler, _ = run(b, [Started(0, "w", 10)])
    cancelled = assembler.cancel()
    assert assembler.response.status == "cancelled" and assembler.cancel() == []
    Response.model_validate(as_json(cancelled[-1].response), strict=True)


def test_input_items_list_like_openai() -> None:
    items = input_items(
        body(
            input=[
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": "r"},
            ]
        ),
        {},
        RID,
    )
    for item in items:
        ITEMS.validate_python(json.loads(msgspec.json.encode(listed(item))), strict=True)
    first = page(items, None, None, 2, "asc")
    assert [json.loads(bytes(r))["id"] for r in first.data] == [items[0].id, items[1].id] and first.has_more
    rest = page(items, first.last_id, None, 10, "asc")
    assert len(rest.data) == 2 and not rest.has_more
    newest = page(items, None, None, 1, "desc")
    assert newest.first_id == items[-1].id


def test_output_items_come_back_as_the_next_turns_input() -> None:
    b = body()
    assembler, _ = run(b, [Started(0, "w", 1), TokenDelta(1, "Hi", 1), Finished(2, "stop", usage())])
    (item,) = output_items(assembler.response)
    assert item.role == "assistant" and item.content == "Hi" and item.id == f"msg_{RID}_o0"


def test_truncation_drops_the_oldest_items_but_keeps_the_instructions() -> None:
    items = [
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "r"},
        {"role": "user", "content": "last"},
    ]
    messages = translate(body(instructions="I", input=items)).messages
    shorter = drop_oldest(messages)
    assert shorter is not None and [m.role for m in shorter] == ["system", "user"]  # the orphaned result went too
    assert drop_oldest(shorter) is None


def test_an_error_after_the_stream_began_is_an_error_event() -> None:
    assembler, out = run(body(), [Started(0, "w", 1), TokenDelta(1, "x", 1)])
    event = assembler.error(Unavailable("lost the connection to Redis"))
    assert event.sequence_number == len(out) and assembler.terminal and assembler.feed(TokenDelta(2, "y", 1)) == []
    checked = EVENTS.validate_python(as_json(event), strict=True)
    assert checked.type == "error" and checked.code == "unavailable"


def test_a_stored_response_over_the_byte_bound_loses_its_logprobs_first() -> None:
    b = body(include=["message.output_text.logprobs"], top_logprobs=5)
    top = tuple((b"x", -1.0) for _ in range(5))
    deltas = [TokenDelta(i + 1, "x", 1, logprobs=(TokenLogprob(b"x", -0.1, top),)) for i in range(50)]
    assembler, _ = run(b, [Started(0, "w", 1), *deltas, Finished(51, "stop", usage())])
    whole = stored(assembler.response, 1 << 20)
    assert json.loads(whole)["output"][0]["content"][0]["logprobs"]
    small = stored(assembler.response, len(whole) - 1)
    assert len(small) < len(whole) // 4
    kept = Response.model_validate_json(small, strict=True)
    assert kept.output_text == "x" * 50 and kept.output[0].content[0].logprobs is None  # type: ignore[union-attr]
