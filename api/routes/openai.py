"""OpenAI /v1 routes: chat completions, completions, models."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.response import Stream

from api.events import EventStream
from api.routes.common import close_shielded, collect, decode, gateway, merged, request_id, unless_gone
from api.streaming import SSE_DONE, SSE_HEADERS, sse, sse_error
from api.translate import openai as translate
from shared.errors import ModelNotFound, ServiceError
from shared.inference import Finished, Usage
from shared.wire import openai as wire

AnyRequest = Request[object, object, State]


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: AnyRequest, state: State) -> Response[wire.ChatCompletion] | Stream:
    body = await decode(request, wire.ChatCompletionRequest)
    req = translate.chat_request(body, request_id(request))
    stream = await unless_gone(request, gateway(state).open(req))
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        frames = _chat_frames(stream, body.model, created, include_usage)
        return Stream(frames, media_type="text/event-stream", headers=SSE_HEADERS)
    try:
        text, end = await unless_gone(request, collect(stream))
    finally:
        await close_shielded(stream)
    return Response(translate.chat_completion(req.id, body.model, created, text, end.finish_reason, end.usage))


async def _chat_frames(stream: EventStream, model: str, created: int, include_usage: bool) -> AsyncIterator[bytes]:
    rid = stream.request.id
    try:
        yield sse(
            translate.chat_chunk(
                rid, model, created, wire.ChoiceDelta(role="assistant", content=""), None, include_usage
            )
        )
        async for _, event in merged([stream]):
            if isinstance(event, Finished):
                yield sse(
                    translate.chat_chunk(rid, model, created, wire.ChoiceDelta(), event.finish_reason, include_usage)
                )
                if include_usage:
                    yield sse(translate.chat_usage_chunk(rid, model, created, event.usage))
            elif event.text:
                yield sse(
                    translate.chat_chunk(rid, model, created, wire.ChoiceDelta(content=event.text), None, include_usage)
                )
        yield SSE_DONE
    except ServiceError as exc:
        yield sse_error(exc)
        yield SSE_DONE
    finally:
        await close_shielded(stream)


@post("/v1/completions", status_code=200)
async def completions(request: AnyRequest, state: State) -> Response[wire.Completion] | Stream:
    body = await decode(request, wire.CompletionRequest)
    reqs = translate.completion_requests(body, request_id(request))
    streams: list[EventStream] = []
    try:
        for req in reqs:
            streams.append(await unless_gone(request, gateway(state).open(req)))
    except BaseException:
        await close_shielded(*streams)
        raise
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        frames = _completion_frames(streams, body.model, created, include_usage)
        return Stream(frames, media_type="text/event-stream", headers=SSE_HEADERS)
    try:
        results = [await unless_gone(request, collect(s)) for s in streams]
    finally:
        await close_shielded(*streams)
    choices = [
        wire.CompletionChoice(index=i, text=text, finish_reason=end.finish_reason)
        for i, (text, end) in enumerate(results)
    ]
    return Response(translate.completion(reqs[0].id, body.model, created, choices, [end.usage for _, end in results]))


async def _completion_frames(
    streams: list[EventStream], model: str, created: int, include_usage: bool
) -> AsyncIterator[bytes]:
    rid = streams[0].request.id
    usages: list[Usage] = []
    try:
        async for index, event in merged(streams):
            if isinstance(event, Finished):
                usages.append(event.usage)
                choice = wire.CompletionChoice(index=index, text="", finish_reason=event.finish_reason)
            elif event.text:
                choice = wire.CompletionChoice(index=index, text=event.text, finish_reason=None)
            else:
                continue
            yield sse(translate.completion_chunk(rid, model, created, [choice], include_usage))
        if include_usage:
            yield sse(translate.completion_chunk(rid, model, created, [], include_usage, usages))
        yield SSE_DONE
    except ServiceError as exc:
        yield sse_error(exc)
        yield SSE_DONE
    finally:
        await close_shielded(*streams)


@post("/v1/embeddings", status_code=200)
async def embeddings(request: AnyRequest, state: State) -> wire.CreateEmbeddingResponse:
    body = await decode(request, wire.EmbeddingCreateParams)
    req = translate.embedding_request(body, request_id(request))
    stream = await unless_gone(request, gateway(state).open(req))
    try:
        result = await unless_gone(request, stream.embedded())
    finally:
        await close_shielded(stream)
    return translate.embedding_response(body.model, result, body.encoding_format)


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
