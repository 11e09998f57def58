"""Stored responses as conversations: earlier turns from previous_response_id, items named by item_reference, the
input_items listing, and settling a response whose API process is gone from the events its worker left."""

from __future__ import annotations

import time

import msgspec
from herd.api.responses.store import Record, ResponseStore
from herd.api.translate.responses_replies import ResponseAssembler, stored
from herd.api.translate.responses_requests import references, response_of_item
from herd.api.wire import responses as wire
from herd.errors import InvalidRequest, NotFound

MAX_TURNS = 256  # previous_response_id links followed at most

_items = msgspec.json.Decoder(list[wire.InputItem])
_response = msgspec.json.Decoder(wire.Response)


def response_of(record: Record) -> wire.Response:
    return _response.decode(record.response)


def inputs_of(record: Record) -> list[wire.InputItem]:
    return _items.decode(record.input)


def output_items(response: wire.Response) -> list[wire.InputItem]:
    """The response's output as input items of a next turn (what a client would send back itself)."""
    items = []
    for item in response.output:
        if isinstance(item, wire.OutputMessage):
            text = "".join(part.text for part in item.content)
            items.append(wire.InputItem(type="message", id=item.id, role="assistant", content=text))
        elif isinstance(item, wire.ReasoningItem):
            continue  # the model's reasoning is not part of the conversation it sees next
        else:
            items.append(
                wire.InputItem(
                    type="function_call", id=item.id, call_id=item.call_id, name=item.name, arguments=item.arguments
                )
            )
    return items


async def history(store: ResponseStore, owner: str, previous: str | None) -> list[wire.InputItem]:
    """Input and output items of the earlier turns, oldest first (each turn's instructions are its own)."""
    turns: list[list[wire.InputItem]] = []
    at = previous
    while at:
        if len(turns) >= MAX_TURNS:
            raise InvalidRequest(f"the conversation is longer than {MAX_TURNS} responses", param="previous_response_id")
        try:
            record = await store.get(owner, at)
        except NotFound as exc:
            raise InvalidRequest(f"Previous response with id '{at}' not found.", param="previous_response_id") from exc
        turns.append([*inputs_of(record), *output_items(response_of(record))])
        at = record.previous or None
    return [item for turn in reversed(turns) for item in turn]


async def resolve(store: ResponseStore, owner: str, body: wire.ResponseCreateParams) -> dict[str, wire.InputItem]:
    """The items the input's item_references name, read from the responses that hold them (the caller's only)."""
    found: dict[str, wire.InputItem] = {}
    for ref in references(body):
        response_id = response_of_item(ref)
        if response_id is None or ref in found:
            continue
        try:
            record = await store.get(owner, response_id)
        except NotFound:
            continue
        for item in [*inputs_of(record), *output_items(response_of(record))]:
            if item.id is not None:
                found.setdefault(item.id, item)
    return found


def listed(item: wire.InputItem) -> wire.StoredItem:
    """A stored input item in the shape OpenAI lists it."""
    own = item.id or ""
    if item.type == "function_call":
        return wire.FunctionCall(
            id=own, call_id=item.call_id or "", name=item.name or "", arguments=item.arguments or ""
        )
    if item.type == "function_call_output":
        output = item.output if isinstance(item.output, str) else ""
        return wire.FunctionCallOutput(id=own, call_id=item.call_id or "", output=output)
    text = item.content if isinstance(item.content, str) else ""
    if item.role == "assistant":
        return wire.OutputMessage(id=own, status="completed", content=[wire.OutputText(text=text)])
    role = item.role if item.role in ("user", "system", "developer") else "user"
    return wire.InputMessage(id=own, role=role, content=[wire.InputText(text)])  # type: ignore[arg-type]


def page(items: list[wire.InputItem], after: str | None, before: str | None, limit: int, order: str) -> wire.ItemList:
    ordered = items if order == "asc" else list(reversed(items))
    ids = [item.id for item in ordered]
    start = ids.index(after) + 1 if after in ids else 0
    end = ids.index(before) if before in ids else len(ordered)
    chosen = ordered[start:end][:limit]
    data = [msgspec.Raw(msgspec.json.encode(listed(item))) for item in chosen]
    return wire.ItemList(
        data=data,
        first_id=chosen[0].id if chosen else None,
        last_id=chosen[-1].id if chosen else None,
        has_more=start + len(chosen) < end,
    )


def assembler_of(record: Record) -> ResponseAssembler:
    """A fresh assembler for a background response, as it was when created: replaying its events through it gives
    the very events (and sequence numbers) every other reader got."""
    response = response_of(record)
    start = msgspec.structs.replace(
        response,
        status="queued",
        output=[],
        usage=None,
        error=None,
        incomplete_details=None,
        completed_at=None,
    )
    tools = bool(response.tools) and response.tool_choice != "none"
    return ResponseAssembler(start, record.logprobs, tools)


async def settle_orphan(store: ResponseStore, response_id: str, record: Record, wait_timeout_s: float) -> Record:
    """A background response nobody runs any more (its API process died): fold the worker's events into it, and
    end it as failed if they will never end (the worker died too, or no worker took it in time)."""
    if record.terminal or not record.background or await store.leased(response_id):
        return record
    record = await store.get(record.owner, response_id)  # as it is now: truncation auto may have queued anew
    assembler = assembler_of(record)
    for event in await store.events(record.request_id):
        assembler.feed(event)
    if not assembler.terminal:
        state = await store.worker_state(record.request_id)
        created = assembler.response.created_at
        if state == "lost":
            assembler.fail("the worker serving this response stopped", "server_error")
        elif state == "waiting" and time.time() - created > wait_timeout_s:
            assembler.fail("the response waited too long in the queue", "server_error")
    response = assembler.response
    if assembler.terminal or response.status != record.status:
        await store.settle(response_id, response.status, stored(response, store.max_bytes))
    return await store.get(record.owner, response_id)
