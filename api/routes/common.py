"""Helpers every route shares: body decoding, request ids, racing work against a client that leaves, opening streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from herd.api.events import AnyRequest, EventStream
from herd.api.gateway import Gateway
from herd.api.grammar.schema import GrammarCache
from herd.api.ids import request_id_of
from herd.api.relay import close_shielded
from herd.api.validation import decode_json
from herd.errors import Cancelled
from herd.inference import GenerationRequest
from litestar import Request
from litestar.datastructures import State

T = TypeVar("T")


def gateway(state: State) -> Gateway:
    gw = state.gateway
    assert isinstance(gw, Gateway)
    return gw


def grammars(state: State) -> GrammarCache:
    cache = state.grammars
    assert isinstance(cache, GrammarCache)
    return cache


def request_id(request: Request[object, object, State]) -> str:
    return request_id_of(request.scope)


async def decode(request: Request[object, object, State], type_: type[T]) -> T:
    """The body as `type_`, through the one validation boundary (depth and integer bounds; a 400 names the field)."""
    return decode_json(await request.body(), type_)


# Routes whose body is a few fields (model names, ids, an OAuth form) take at most this much: 413 before reading more.
# The others take up to settings.max_body_bytes (app-wide); uploads stream under their own limits.
SMALL_BODY = 64 * 1024

MODEL_LABEL = "herd_model"  # scope["state"] key: the model an admitted request is for (the metrics' label)


async def admit(request: Request[object, object, State], state: State, req: AnyRequest) -> EventStream:
    """Queue `req` and wait until a worker admitted it (or the client left); the response is counted per model."""
    stream = await unless_gone(request, gateway(state).open(req))
    request.scope.setdefault("state", {})[MODEL_LABEL] = req.model
    return stream


async def _disconnected(request: Request[object, object, State]) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_gone(request: Request[object, object, State], work: Awaitable[T]) -> T:
    """Run `work` until done or until the client disconnects, whichever is first (then `work` is cancelled)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise Cancelled("the client closed the connection")
    return task.result()


SSE_KEEPALIVE = b": keep-alive\n\n"  # an SSE comment: both OpenAI SDKs skip it


async def open_streaming(
    request: Request[object, object, State], state: State, reqs: list[GenerationRequest]
) -> tuple[list[EventStream], asyncio.Future[object] | None]:
    """Queue `reqs` for one streamed response. Returns once workers admitted them all (a refusal is still a real
    status), or, when that takes longer than sse_commit_after_s, with the admission pending: the response then
    opens at once and keeps the connection alive with comments while it waits (see keep_alive)."""
    gw = gateway(state)
    streams: list[EventStream] = []
    try:
        for req in reqs:
            streams.append(await unless_gone(request, gw.open(req, wait=False)))
            request.scope.setdefault("state", {})[MODEL_LABEL] = req.model
    except BaseException:
        await close_shielded(*streams)
        raise
    admitted: asyncio.Future[object] = asyncio.ensure_future(_start_all(streams))
    try:
        await unless_gone(request, asyncio.wait({admitted}, timeout=gw.settings.sse_commit_after_s))
        if admitted.done():
            admitted.result()
            return streams, None
    except BaseException:
        admitted.cancel()
        await close_shielded(*streams)
        raise
    return streams, admitted


async def _start_all(streams: list[EventStream]) -> None:
    for stream in streams:
        await stream.start()


async def keep_alive(pending: asyncio.Future[object] | None, every: float) -> AsyncIterator[bytes]:
    """Comments every `every` seconds until the pending admission ends; its error (if any) is raised here."""
    if pending is None:
        return
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=every)
            if done:
                pending.result()
                return
            yield SSE_KEEPALIVE
    finally:
        pending.cancel()
