"""OpenAI /v1 routes: chat completions, completions, models."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from herd.api.events import EventStream
from herd.api.relay import close_shielded, merged
from herd.api.routes.common import (
    admit,
    decode,
    gateway,
    grammars,
    keep_alive,
    open_streaming,
    request_id,
    unless_gone,
)
from herd.api.streaming import SSE_DONE, SSE_HEADERS, sse, sse_error
from herd.api.translate import openai_replies, openai_requests
from herd.api.translate.openai_chat_replies import ChatAssembler
from herd.api.translate.openai_functions import uses_functions
from herd.api.translate.openai_text_replies import CompletionAssembler
from herd.api.wire import openai as wire
from herd.errors import ModelNotFound, ServiceError
from herd.inference import Finished, TokenDelta
from herd.toolparams import signatures
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.response import Stream

AnyRequest = Request[object, object, State]
Pending = asyncio.Future[object] | None  # a streamed request's admission, when the response opened before it


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: AnyRequest, state: State) -> Response[wire.ChatCompletion] | Stream:
    body = await decode(request, wire.ChatCompletionRequest)
    req = openai_requests.chat_request(body, request_id(request), grammars(state))
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    tools = req.tool_constraint is not None
    created = int(time.time())
    functions = uses_functions(body)
    typed = signatures((t.name, t.parameters) for t in req.tools)
    chat = ChatAssembler(
        req.id, body.model, created, req.n, tools, bool(body.logprobs), include_usage, functions, typed
    )
    if body.stream:
        [stream], pending = await open_streaming(request, state, [req])
        frames = _chat_frames(stream, chat, include_usage, pending, state.gateway.settings.sse_keepalive_s)
        return Stream(frames, media_type="text/event-stream", headers=SSE_HEADERS)
    stream = await admit(request, state, req)
    try:
        await unless_gone(request, _drain(stream, chat.feed))
    finally:
        await close_shielded(stream)
    return Response(chat.completion())


async def _drain(stream: EventStream, feed: Callable[[int, TokenDelta | Finished], object]) -> None:
    async for event in stream.deltas():
        feed(event.index, event)


async def _chat_frames(
    stream: EventStream, chat: ChatAssembler, include_usage: bool, pending: Pending, every: float
) -> AsyncIterator[bytes]:
    try:
        async for comment in keep_alive(pending, every):
            yield comment
        for chunk in chat.opening():
            yield sse(chunk)
        async for event in stream.deltas():
            for chunk in chat.feed(event.index, event):
                yield sse(chunk)
        if include_usage:
            yield sse(chat.usage_chunk())
        yield SSE_DONE
    except ServiceError as exc:
        yield sse_error(exc)
        yield SSE_DONE
    finally:
        await close_shielded(stream)


@post("/v1/completions", status_code=200)
async def completions(request: AnyRequest, state: State) -> Response[wire.Completion] | Stream:
    body = await decode(request, wire.CompletionRequest)
    reqs = openai_requests.completion_requests(body, request_id(request))
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    prompts = [r.prompt or "" for r in reqs]
    text = CompletionAssembler(
        reqs[0].id,
        body.model,
        int(time.time()),
        prompts,
        reqs[0].n,
        body.logprobs is not None,
        bool(body.echo),
        include_usage,
    )
    if body.stream:
        streams, pending = await open_streaming(request, state, reqs)
        frames = _completion_frames(streams, text, include_usage, pending, state.gateway.settings.sse_keepalive_s)
        return Stream(frames, media_type="text/event-stream", headers=SSE_HEADERS)
    streams = list[EventStream]()
    try:
        for req in reqs:
            streams.append(await admit(request, state, req))
    except BaseException:
        await close_shielded(*streams)
        raise
    try:
        await unless_gone(request, _drain_all(streams, text))
    finally:
        await close_shielded(*streams)
    return Response(text.completion())


async def _drain_all(streams: list[EventStream], text: CompletionAssembler) -> None:
    async for index, event in merged(streams):
        text.feed(index, event)


async def _completion_frames(
    streams: list[EventStream], text: CompletionAssembler, include_usage: bool, pending: Pending, every: float
) -> AsyncIterator[bytes]:
    try:
        async for comment in keep_alive(pending, every):
            yield comment
        for chunk in text.opening():
            yield sse(chunk)
        async for index, event in merged(streams):
            for chunk in text.feed(index, event):
                yield sse(chunk)
        if include_usage:
            yield sse(text.usage_chunk())
        yield SSE_DONE
    except ServiceError as exc:
        yield sse_error(exc)
        yield SSE_DONE
    finally:
        await close_shielded(*streams)


@post("/v1/embeddings", status_code=200)
async def embeddings(request: AnyRequest, state: State) -> wire.CreateEmbeddingResponse:
    body = await decode(request, wire.EmbeddingCreateParams)
    req = openai_requests.embedding_request(body, request_id(request))
    stream = await admit(request, state, req)
    try:
        result = await unless_gone(request, stream.embedded())
    finally:
        await close_shielded(stream)
    return openai_replies.embedding_response(body.model, result, body.encoding_format)


@get("/v1/models")
async def list_models(state: State) -> wire.ModelList:
    models = await gateway(state).models()
    created = int(state.started_at)
    return wire.ModelList(data=[wire.Model(id=name, created=created) for name in sorted(models)])


@get("/v1/models/{model_id:path}")
async def get_model(model_id: str, state: State) -> wire.Model:
    model_id = model_id.lstrip("/")
    if model_id not in await gateway(state).models():
        raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")
    return wire.Model(id=model_id, created=int(state.started_at))


ROUTES = [chat_completions, completions, embeddings, list_models, get_model]
