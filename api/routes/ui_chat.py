"""The AI SDK's UI message stream at /v1/ui/chat: any `useChat` frontend points its DefaultChatTransport here.

An answer asked for with `resumable: true` (and the chat's `id`) can be read again: GET /v1/ui/chat/{id}/stream,
useChat's reconnect, replays it from the durable event log and follows it live, on any API replica
(api/responses/ui_chats.py); 204 when the chat has no answer left unread. DELETE on the same path stops it."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

from herd.api.auth.principal import principal_of
from herd.api.events import EventStream
from herd.api.relay import close_shielded
from herd.api.responses.store import ResponseStore
from herd.api.responses.ui_chats import Answer, ChatStreams
from herd.api.routes.common import decode, gateway, grammars, keep_alive, open_streaming, request_id
from herd.api.streaming import SSE_DONE, sse
from herd.api.translate import ui_messages
from herd.api.translate.ui_messages import UIStream
from herd.api.wire import ui as wire
from herd.errors import ServiceError
from herd.inference import Failed, Finished, Started, TokenDelta
from herd.toolparams import signatures
from litestar import Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.response import Stream

AnyRequest = Request[object, object, State]
PATH = "/v1/ui/chat"


def chats_of(state: State) -> ChatStreams:
    chats = state.ui_chats
    assert isinstance(chats, ChatStreams)
    return chats


class _Resumable:
    """Where a resumable answer is recorded: its chat, and the caller who owns it."""

    def __init__(self, chats: ChatStreams, owner: str, chat_id: str, answer: Answer) -> None:
        self.chats, self.owner, self.chat_id, self.answer = chats, owner, chat_id, answer

    async def end(self) -> None:
        await self.chats.end(self.owner, self.chat_id, self.answer.request_id)

    async def delivered(self) -> None:
        """A client read the answer to its end. Redis away: the record outlives it (up to its TTL), and a reload
        replays the whole answer once more, which is harmless; the stream this client reads still ends well."""
        with contextlib.suppress(ServiceError):
            await self.end()


def _stream(frames: AsyncIterator[bytes]) -> Stream:
    return Stream(frames, media_type="text/event-stream", headers=wire.HEADERS)


@post(PATH, status_code=200)
async def ui_chat(request: AnyRequest, state: State) -> Stream:
    body = await decode(request, wire.UIChatRequest)
    req = ui_messages.chat_request(body, request_id(request), grammars(state))
    [stream], pending = await open_streaming(request, state, [req])
    tools = req.tool_constraint is not None
    schemas = tuple((t.name, t.parameters) for t in req.tools)
    answer = UIStream(f"msg-{secrets.token_hex(12)}", body.model, tools, signatures(schemas))
    resume = None
    if ui_messages.resumable(body):
        record = Answer(req.id, answer.message_id, body.model, tools, schemas)
        resume = _Resumable(chats_of(state), principal_of(request).subject, body.id, record)
        try:
            await resume.chats.begin(resume.owner, resume.chat_id, record)
        except BaseException:
            if pending is not None:
                pending.cancel()
            await close_shielded(stream)
            raise
    return _stream(_frames(stream, answer, pending, state.gateway.settings.sse_keepalive_s, resume))


async def _frames(
    stream: EventStream,
    answer: UIStream,
    pending: asyncio.Future[object] | None,
    every: float,
    resume: _Resumable | None,
) -> AsyncIterator[bytes]:
    handed_over = False
    try:
        async for comment in keep_alive(pending, every):
            yield comment
        for chunk in answer.opening():
            yield sse(chunk)
        async for event in stream.deltas():
            for chunk in answer.finish(event) if isinstance(event, Finished) else answer.feed(event):
                yield sse(chunk)
    except ServiceError as exc:
        for chunk in answer.failed(exc.message):
            yield sse(chunk)
    except BaseException:
        if resume is not None and not stream.finished:  # the client went away: the answer goes on for a reconnect
            resume.chats.detach(stream)
            handed_over = True
        raise
    finally:
        if not handed_over:
            await close_shielded(stream)
    if resume is not None:
        await resume.delivered()
    yield SSE_DONE


@get(f"{PATH}/{{chat_id:str}}/stream")
async def ui_chat_resume(request: AnyRequest, state: State, chat_id: str) -> Response[None] | Stream:
    """useChat's reconnect (`resume: true`): the chat's unread answer from its first chunk, then live; 204 when
    there is none."""
    resume = await _active(request, state, chat_id)
    if resume is None:
        return Response(None, status_code=204)
    return _stream(_replay(state, resume))


@delete(f"{PATH}/{{chat_id:str}}/stream", status_code=204)
async def ui_chat_stop(request: AnyRequest, state: State, chat_id: str) -> None:
    """Stop the chat's resumable answer (a dropped connection does not): the worker drops the generation."""
    resume = await _active(request, state, chat_id)
    if resume is not None:
        await gateway(state).cancel(resume.answer.request_id)
        await resume.end()


async def _active(request: AnyRequest, state: State, chat_id: str) -> _Resumable | None:
    chats, owner = chats_of(state), principal_of(request).subject
    found = await chats.active(owner, chat_id)
    return None if found is None else _Resumable(chats, owner, chat_id, found)


async def _replay(state: State, resume: _Resumable) -> AsyncIterator[bytes]:
    """The answer's events from the durable log through a fresh UIStream (the same chunks, ids included, as its
    POST sent), live once caught up; a generation nobody runs any more ends it with an error."""
    store = state.responses
    assert isinstance(store, ResponseStore)
    settings = gateway(state).settings
    record = resume.answer
    answer = UIStream(record.message_id, record.model, record.tools, record.signatures())
    for chunk in answer.opening():
        yield sse(chunk)
    since = time.monotonic()
    ended = False
    try:
        async for event in store.follow(record.request_id, max(100, int(settings.heartbeat_interval_s * 1000))):
            if isinstance(event, TokenDelta):
                chunks = answer.feed(event)
            elif isinstance(event, Finished):
                chunks, ended = answer.finish(event), True
            elif isinstance(event, Failed):
                chunks, ended = answer.failed(event.message), True
            elif event is None:
                chunks, ended = await _orphaned(store, record.request_id, answer, since, settings.queue_wait_timeout_s)
            else:
                assert isinstance(event, Started), event
                continue
            for chunk in chunks:
                yield sse(chunk)
            if ended:
                break
    except ServiceError as exc:
        for chunk in answer.failed(exc.message):
            yield sse(chunk)
    await resume.delivered()
    yield SSE_DONE


async def _orphaned(
    store: ResponseStore, request_id: str, answer: UIStream, since: float, wait_timeout_s: float
) -> tuple[list[wire.UIMessageChunk], bool]:
    """No event for a while: has the generation been given up (its worker died, or none took it in time)?"""
    found = await store.worker_state(request_id)
    if found == "lost":
        return answer.failed("the worker generating this answer stopped"), True
    if found == "waiting" and time.monotonic() - since > wait_timeout_s:
        return answer.failed("no worker took this answer in time"), True
    return [], False


ROUTES = [ui_chat, ui_chat_resume, ui_chat_stop]
