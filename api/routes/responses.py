"""OpenAI Responses routes: create (plain, streamed, background), retrieve (and resume a background stream from
any replica), delete, cancel, input_items. Generation is chat's: one GenerationRequest through the gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal, TypeVar

import msgspec
from herd.api.auth.principal import principal_of
from herd.api.events import EventStream
from herd.api.relay import close_shielded
from herd.api.responses.runner import BackgroundRunner
from herd.api.responses.store import TERMINAL, Record, ResponseStore
from herd.api.routes.common import (
    MODEL_LABEL,
    admit,
    decode,
    gateway,
    grammars,
    keep_alive,
    open_streaming,
    request_id,
    unless_gone,
)
from herd.api.routes.responses_history import (
    assembler_of,
    history,
    inputs_of,
    page,
    resolve,
    response_of,
    settle_orphan,
)
from herd.api.streaming import SSE_HEADERS
from herd.api.translate.responses_replies import ResponseAssembler, initial, sse_event, stored
from herd.api.translate.responses_requests import drop_oldest, generation_request, input_items, wants_logprobs
from herd.api.wire import responses as wire
from herd.errors import ContextLengthExceeded, ErrorKind, InvalidRequest, ModelNotFound, NotFound, ServiceError
from herd.inference import Failed, GenerationRequest, StreamEvent
from litestar import Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.response import Stream

AnyRequest = Request[object, object, State]
Pending = asyncio.Future[object] | None
T = TypeVar("T")
MAX_TRUNCATIONS = 64  # truncation auto: oldest items dropped one a try, at most this many times


def store_of(state: State) -> ResponseStore:
    store = state.responses
    assert isinstance(store, ResponseStore)
    return store


def runner_of(state: State) -> BackgroundRunner:
    runner = state.response_runner
    assert isinstance(runner, BackgroundRunner)
    return runner


def _json(body: bytes) -> Response[bytes]:
    return Response(body, media_type="application/json")


def _stream(frames: AsyncIterator[bytes]) -> Stream:
    return Stream(frames, media_type="text/event-stream", headers=SSE_HEADERS)


@post("/v1/responses", status_code=200)
async def create_response(request: AnyRequest, state: State) -> Response[bytes] | Stream:
    body = await decode(request, wire.ResponseCreateParams)
    rid = request_id(request)
    response_id = f"resp_{rid}"
    owner = principal_of(request).subject
    store = store_of(state)
    background, keep = bool(body.background), body.store is not False
    if background and not keep:
        raise InvalidRequest("a background response must be stored; leave out store: false", param="store")
    if body.model not in await gateway(state).models():
        raise ModelNotFound(f"The model '{body.model}' does not exist", param="model")
    earlier = await history(store, owner, body.previous_response_id)
    items = input_items(body, await resolve(store, owner, body), rid)
    req = generation_request(body, rid, [*earlier, *items], grammars(state), durable=background)
    response = initial(body, response_id, int(time.time()), body.previous_response_id)
    assembler = ResponseAssembler.for_request(body, response)
    record = Record(
        owner=owner,
        status=response.status,
        response=msgspec.json.encode(response),
        input=msgspec.json.encode(items),
        previous=body.previous_response_id or "",
        request_id=rid,
        background=background,
        logprobs=wants_logprobs(body),
    )
    if keep:
        store.check(record)
    if background:
        await store.create(response_id, record)
        try:
            await runner_of(state).start(response_id, req, assembler, body.truncation == "auto")
        except BaseException:
            await store.delete(owner, response_id)  # refused before it was queued: nothing to keep
            raise
        request.scope.setdefault("state", {})[MODEL_LABEL] = req.model
        if body.stream:
            return _stream(_follow(state, response_id, record, -1))
        return _json(record.response)
    auto = body.truncation == "auto"
    if body.stream:
        stream, pending = await _fitted(lambda r: _open_streaming(request, state, r), req, auto)
        every = gateway(state).settings.sse_keepalive_s
        return _stream(_live(stream, assembler, pending, every, store if keep else None, record))
    stream, _ = await _fitted(lambda r: _admit(request, state, r), req, auto)
    try:
        await unless_gone(request, _drain(stream, assembler))
    finally:
        await close_shielded(stream)
    if keep:
        await _store_final(store, record, assembler)
    return _json(msgspec.json.encode(assembler.response))


async def _open_streaming(
    request: AnyRequest, state: State, req: GenerationRequest
) -> tuple[EventStream, asyncio.Future[object] | None]:
    [stream], pending = await open_streaming(request, state, [req])
    return stream, pending


async def _admit(request: AnyRequest, state: State, req: GenerationRequest) -> tuple[EventStream, None]:
    return await admit(request, state, req), None


async def _fitted(open_: Callable[[GenerationRequest], Awaitable[T]], req: GenerationRequest, auto: bool) -> T:
    """Open `req`; a prompt beyond the context is a 400 naming input, or with truncation auto loses its oldest
    items (the instructions stay) until it fits. Each try is a new request id: a request runs at most once."""
    tries = 0
    while True:
        try:
            return await open_(req)
        except ContextLengthExceeded as exc:
            shorter = drop_oldest(req.messages or ()) if auto and tries < MAX_TRUNCATIONS else None
            if shorter is None:
                raise ContextLengthExceeded(exc.message, param="input") from exc
            tries += 1
            req = msgspec.structs.replace(req, id=f"{req.id.split('-')[0]}-t{tries}", messages=shorter)


async def _drain(stream: EventStream, assembler: ResponseAssembler) -> None:
    async for event in stream.deltas():
        assembler.feed(event)


async def _store_final(store: ResponseStore, record: Record, assembler: ResponseAssembler) -> None:
    response = assembler.response
    final = msgspec.structs.replace(record, status=response.status, response=stored(response, store.max_bytes))
    await store.create(response.id, final)


async def _live(
    stream: EventStream,
    assembler: ResponseAssembler,
    pending: Pending,
    every: float,
    store: ResponseStore | None,
    record: Record,
) -> AsyncIterator[bytes]:
    """A streamed response that is not background: live from the worker's pub/sub events, like chat."""
    try:
        async for comment in keep_alive(pending, every):
            yield comment
        for event in assembler.opening():
            yield sse_event(event)
        async for delta in stream.deltas():
            for event in assembler.feed(delta):
                yield sse_event(event)
    except ServiceError as exc:
        yield sse_event(assembler.error(exc))
    finally:
        await close_shielded(stream)
    if store is not None and assembler.terminal and assembler.response.status in TERMINAL:
        await _store_final(store, record, assembler)


async def _follow(state: State, response_id: str, record: Record, starting_after: int) -> AsyncIterator[bytes]:
    """A background response's events from its Redis Stream: replayed through a fresh assembler (so every reader
    numbers them alike), those after `starting_after` sent, then followed live to the terminal event."""
    store = store_of(state)
    settings = gateway(state).settings
    assembler = assembler_of(record)
    for event in assembler.opening():
        if event.sequence_number > starting_after:
            yield sse_event(event)
    block_ms = max(100, int(settings.heartbeat_interval_s * 1000))
    attempt: str | None = record.request_id
    try:
        while attempt is not None:
            current, attempt = attempt, None
            async for found in store.follow(current, block_ms):
                if _refused_for_length(found, assembler):
                    attempt = await _next_attempt(store, response_id, current, block_ms)
                    if attempt is not None:
                        break  # truncation auto queued a shorter prompt: its events are the response's
                if found is None:
                    events = await _check(store, response_id, record, assembler, settings.queue_wait_timeout_s)
                else:
                    events = assembler.feed(found)
                for event in events:
                    if event.sequence_number > starting_after:
                        yield sse_event(event)
                if assembler.terminal:
                    return
    except ServiceError as exc:
        yield sse_event(assembler.error(exc))


def _refused_for_length(event: StreamEvent | None, assembler: ResponseAssembler) -> bool:
    """A try that did not fit the context, before anything was generated, under truncation auto."""
    return (
        isinstance(event, Failed)
        and event.kind == ErrorKind.CONTEXT_LENGTH_EXCEEDED
        and assembler.response.truncation == "auto"
        and assembler.response.status == "queued"
    )


async def _next_attempt(store: ResponseStore, response_id: str, current: str, block_ms: int) -> str | None:
    """The generation the runner queued after `current` did not fit; None when it queued none (the response then
    fails with `current`'s refusal)."""
    while True:
        found = await store.request_id(response_id)
        if found is not None and found != current:
            return found
        status = await store.status(response_id)
        if status is None or status in TERMINAL or not await store.leased(response_id):
            return None
        await asyncio.sleep(block_ms / 1000)


async def _check(
    store: ResponseStore, response_id: str, record: Record, assembler: ResponseAssembler, wait_timeout_s: float
) -> list[wire.StreamEvent]:
    """No event for a while: has the response ended without its worker saying so (cancelled while queued, or
    settled as failed because whoever ran it is gone)?"""
    status = await store.status(response_id)
    if status is None:
        return [assembler.error(NotFound(f"Response with id '{response_id}' was deleted.", param="response_id"))]
    if status not in TERMINAL:
        settled = await settle_orphan(store, response_id, record, wait_timeout_s)
        status = settled.status
        if status not in TERMINAL:
            return []
    if status == "cancelled":
        return assembler.cancel()
    stored = response_of(await store.get(record.owner, response_id))
    error = stored.error
    if error is not None:
        return assembler.fail(error.message, error.code)
    return assembler.fail("the response's events are no longer stored")


@get("/v1/responses/{response_id:str}")
async def retrieve_response(
    request: AnyRequest, state: State, response_id: str, stream: bool = False, starting_after: int | None = None
) -> Response[bytes] | Stream:
    store = store_of(state)
    record = await store.get(principal_of(request).subject, response_id)
    if stream:
        if not record.background:
            raise InvalidRequest("only background responses can be streamed again", param="stream")
        return _stream(_follow(state, response_id, record, -1 if starting_after is None else starting_after))
    settled = await settle_orphan(store, response_id, record, gateway(state).settings.queue_wait_timeout_s)
    return _json(settled.response)


@delete("/v1/responses/{response_id:str}", status_code=200)
async def delete_response(request: AnyRequest, state: State, response_id: str) -> wire.DeletedResponse:
    record = await store_of(state).delete(principal_of(request).subject, response_id)
    if not record.terminal:
        await runner_of(state).cancel(response_id)
        await gateway(state).cancel(record.request_id)
    return wire.DeletedResponse(id=response_id)


@post("/v1/responses/{response_id:str}/cancel", status_code=200)
async def cancel_response(request: AnyRequest, state: State, response_id: str) -> Response[bytes]:
    store = store_of(state)
    owner = principal_of(request).subject
    record = await store.get(owner, response_id)
    if not record.background:
        raise InvalidRequest("only background responses can be cancelled", param="response_id")
    if record.terminal:
        return _json(record.response)  # idempotent: a second cancel answers as the first did
    await gateway(state).cancel(record.request_id)  # the worker stops at its next step, or never starts
    if not await runner_of(state).cancel(response_id):
        # Run by another replica (which sees the status and stops) or by none: settle it here.
        assembler = assembler_of(record)
        for event in await store.events(record.request_id):
            assembler.feed(event)
        assembler.cancel()
        await store.settle(response_id, assembler.response.status, stored(assembler.response, store.max_bytes))
    return _json((await store.get(owner, response_id)).response)


@get("/v1/responses/{response_id:str}/input_items")
async def list_input_items(
    request: AnyRequest,
    state: State,
    response_id: str,
    after: str | None = None,
    before: str | None = None,
    limit: int = 20,
    order: str = "desc",
) -> wire.ItemList:
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit must be between 1 and 100", param="limit")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be asc or desc", param="order")
    direction: Literal["asc", "desc"] = "asc" if order == "asc" else "desc"
    record = await store_of(state).get(principal_of(request).subject, response_id)
    return page(inputs_of(record), after, before, limit, direction)


ROUTES = [create_response, retrieve_response, delete_response, cancel_response, list_input_items]
