"""Ollama /api routes: chat, generate, tags, show, ps, version, and the `GET /` probe tools use to find a server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec
from herd import reasoning
from herd.api.events import EventStream
from herd.api.models.catalog import Catalog
from herd.api.models.store import Manifest, ModelStore
from herd.api.relay import close_shielded
from herd.api.routes.common import SMALL_BODY, admit, decode, gateway, grammars, request_id, unless_gone
from herd.api.streaming import NDJSON_HEADERS, NDJSON_MEDIA_TYPE, ndjson, ndjson_error
from herd.api.translate import ollama_models, ollama_replies, ollama_requests
from herd.api.translate.ollama_replies import OllamaReply, Reply
from herd.api.wire import ollama as wire
from herd.errors import InvalidRequest, ModelNotFound, ServiceError, Unavailable
from herd.inference import Embedded, EmbeddingRequest, Finished
from herd.loading import parse_keep_alive
from herd.toolparams import signatures
from litestar import MediaType, Request, Response, get, head, post
from litestar.datastructures import State
from litestar.response import Stream

AnyRequest = Request[object, object, State]

# The Ollama API level herd speaks. Clients gate features on this number; herd's own version would read as an
# ancient Ollama.
OLLAMA_VERSION = "0.12.0"


def _catalog(state: State) -> Catalog:
    catalog = state.catalog
    assert isinstance(catalog, Catalog)
    return catalog


def _store(state: State) -> ModelStore:
    store = state.store
    assert isinstance(store, ModelStore)
    return store


async def _manifest(state: State, name: str) -> Manifest | None:
    return (await asyncio.to_thread(_store(state).all)).get(name)


async def _keep_alive(state: State, served: str, value: wire.KeepAlive | None) -> float:
    """Record the request's keep_alive (the server default when absent) for the model's worker."""
    seconds = parse_keep_alive(gateway(state).settings.keep_alive if value is None else value)
    await gateway(state).loads.set_keep_alive(served, seconds)
    return seconds


async def _load(state: State, served: str, keep_alive: float) -> wire.DoneReason:
    """An empty prompt: Ollama's way to load a model (or, with keep_alive 0, to unload it)."""
    gw = gateway(state)
    if keep_alive == 0:
        return "unload"  # the worker reads keep_alive 0 and exits once idle
    deadline = time.monotonic() + gw.settings.queue_wait_timeout_s
    while not any(served in w.models for w in await gw.workers(max_age_s=0)):
        if time.monotonic() > deadline:
            raise Unavailable(f"model '{served}' did not load in time")
        await gw.load(served)
        await asyncio.sleep(0.25)
    return "load"


async def _resolve(state: State, name: str) -> tuple[str, int]:
    """The served model `name` stands for, and its context length; Ollama's 400 and 404 otherwise."""
    if not name:
        raise InvalidRequest("model is required", param="model")
    known = await gateway(state).models()
    served = ollama_requests.resolve_model(name, known)
    if served is None:
        raise ModelNotFound(ollama_requests.not_found_message(name), param="model")
    return served, known[served]


async def _thinks(state: State, served: str, think: bool | str | None) -> bool:
    """Whether the model's chat template reasons (read only when a request asks it to think). A model whose file
    this API cannot read is given the benefit of the doubt."""
    if think in (None, False, ""):
        return False
    file = await _catalog(state).describe(served)
    return file is None or reasoning.detect(str(file.info.metadata.get("tokenizer.chat_template", ""))) is not None


@post("/api/chat", status_code=200)
async def chat(request: AnyRequest, state: State) -> Response[Reply] | Stream:
    started = time.perf_counter_ns()
    body = await decode(request, wire.ChatRequest)
    served, n_ctx = await _resolve(state, body.model)
    keep_alive = await _keep_alive(state, served, body.keep_alive)
    if not body.messages:
        reason = await unless_gone(request, _load(state, served, keep_alive))
        return Response(msgspec.structs.replace(ollama_replies.chat_loaded(body.model), done_reason=reason))
    body = ollama_models.chat_defaults(body, await _manifest(state, served))
    thinks = await _thinks(state, served, body.think)
    req = ollama_requests.chat_request(body, served, n_ctx, request_id(request), grammars(state), thinks)
    stream = await admit(request, state, req)
    tools = req.tool_constraint is not None
    typed = signatures((t.name, t.parameters) for t in req.tools)
    reply = OllamaReply("chat", body.model, tools, req.logprobs is not None, req.reasoning != "off", typed)
    return await _reply(request, stream, body.stream, reply, started)


@post("/api/generate", status_code=200)
async def generate(request: AnyRequest, state: State) -> Response[Reply] | Stream:
    started = time.perf_counter_ns()
    body = await decode(request, wire.GenerateRequest)
    served, n_ctx = await _resolve(state, body.model)
    keep_alive = await _keep_alive(state, served, body.keep_alive)
    if not body.prompt:
        reason = await unless_gone(request, _load(state, served, keep_alive))
        return Response(msgspec.structs.replace(ollama_replies.generate_loaded(body.model), done_reason=reason))
    body = ollama_models.generate_defaults(body, await _manifest(state, served))
    thinks = await _thinks(state, served, body.think)
    req = ollama_requests.generate_request(body, served, n_ctx, request_id(request), grammars(state), thinks)
    stream = await admit(request, state, req)
    reply = OllamaReply("generate", body.model, False, req.logprobs is not None, req.reasoning != "off")
    return await _reply(request, stream, body.stream, reply, started)


async def _reply(
    request: AnyRequest, stream: EventStream, streaming: bool | None, reply: OllamaReply, started_ns: int
) -> Response[Reply] | Stream:
    """NDJSON lines unless `stream` is false (Ollama streams by default); else one object with the whole answer."""
    if streaming is not False:
        return Stream(_lines(stream, reply, started_ns), media_type=NDJSON_MEDIA_TYPE, headers=NDJSON_HEADERS)
    try:
        end = await unless_gone(request, _drain(stream, reply))
    finally:
        await close_shielded(stream)
    return Response(reply.whole(end, time.perf_counter_ns() - started_ns))


async def _drain(stream: EventStream, reply: OllamaReply) -> Finished:
    async for event in stream.deltas():
        if isinstance(event, Finished):
            return event
        reply.feed(event)
    raise AssertionError("a stream ends with Finished or raises")


async def _lines(stream: EventStream, reply: OllamaReply, started_ns: int) -> AsyncIterator[bytes]:
    try:
        async for event in stream.deltas():
            lines = (
                reply.finish(event, time.perf_counter_ns() - started_ns)
                if isinstance(event, Finished)
                else reply.feed(event)
            )
            for line in lines:
                yield ndjson(line)
    except ServiceError as exc:
        yield ndjson_error(exc)
    finally:
        await close_shielded(stream)


@post("/api/embed", status_code=200)
async def embed(request: AnyRequest, state: State) -> wire.EmbedResponse:
    started = time.perf_counter_ns()
    body = await decode(request, wire.EmbedRequest)
    served, _ = await _resolve(state, body.model)
    await _keep_alive(state, served, body.keep_alive)
    inputs = [body.input] if isinstance(body.input, str) else body.input
    if not inputs or not all(inputs):
        raise InvalidRequest("input must be a non-empty string or a list of non-empty strings", param="input")
    req = ollama_requests.embed_request(inputs, served, body.truncate, body.dimensions, request_id(request))
    result, queued_ns = await _embedded(request, state, req)
    return ollama_replies.embed_response(body.model, result, time.perf_counter_ns() - started, queued_ns)


@post("/api/embeddings", status_code=200)
async def embeddings(request: AnyRequest, state: State) -> wire.EmbeddingsResponse:
    body = await decode(request, wire.EmbeddingsRequest)
    served, _ = await _resolve(state, body.model)
    await _keep_alive(state, served, body.keep_alive)
    if not body.prompt:
        return wire.EmbeddingsResponse(embedding=[])  # as Ollama answers an empty prompt
    req = ollama_requests.embed_request([body.prompt], served, True, None, request_id(request))
    result, _ = await _embedded(request, state, req)
    (vector,) = ollama_replies.embed_response(body.model, result, 0, 0).embeddings
    return wire.EmbeddingsResponse(embedding=vector)


async def _embedded(request: AnyRequest, state: State, req: EmbeddingRequest) -> tuple[Embedded, int]:
    stream = await admit(request, state, req)
    queued_ns = int((time.time() - req.enqueued_at) * 1e9)  # until a worker took it: Ollama's load_duration
    try:
        return await unless_gone(request, stream.embedded()), queued_ns
    finally:
        await close_shielded(stream)


@get("/api/tags")
async def tags(state: State) -> wire.ListResponse:
    catalog, started_at = _catalog(state), float(state.started_at)
    manifests = await asyncio.to_thread(_store(state).all)
    models = []
    for name in sorted(await gateway(state).models()):
        file = await catalog.describe(name)
        models.append(ollama_models.list_model(name, manifests.get(name), file, started_at))
    return wire.ListResponse(models=models)


@post("/api/show", status_code=200, request_max_body_size=SMALL_BODY)
async def show(request: AnyRequest, state: State) -> wire.ShowResponse:
    body = await decode(request, wire.ShowRequest)
    served, _ = await _resolve(state, body.model or body.name)
    file = await _catalog(state).describe(served, verbose=body.verbose)
    return ollama_models.show(served, await _manifest(state, served), file, float(state.started_at))


@get("/api/ps")
async def ps(state: State) -> wire.ProcessResponse:
    gw = gateway(state)
    running: dict[str, int] = {}
    for worker in await gw.workers(max_age_s=0):
        running.update(dict.fromkeys(worker.models, worker.n_ctx))
    expires = await gw.loads.expirations(sorted(running))
    catalog, manifests = _catalog(state), await asyncio.to_thread(_store(state).all)
    models = [
        ollama_models.running_model(name, n, manifests.get(name), await catalog.describe(name), expires[name])
        for name, n in sorted(running.items())
    ]
    return wire.ProcessResponse(models=models)


@get("/api/version")
async def version() -> wire.VersionResponse:
    return wire.VersionResponse(version=OLLAMA_VERSION)


@get("/", media_type=MediaType.TEXT)
async def root() -> str:
    return "Ollama is running"


@head("/")
async def root_head() -> None:
    return None


ROUTES = [chat, generate, embed, embeddings, tags, show, ps, version, root, root_head]
