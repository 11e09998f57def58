"""Ollama model management routes: blobs, create, copy, delete, pull. An admin operation (paths as Ollama's)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from herd.api.models.manage import create as create_model
from herd.api.models.manage import receive_blob
from herd.api.models.names import canonical_name, parse_digest
from herd.api.models.pull import Puller, resolve_name
from herd.api.models.store import ModelStore
from herd.api.routes.common import SMALL_BODY, decode, gateway, unless_gone
from herd.api.streaming import NDJSON_HEADERS, NDJSON_MEDIA_TYPE, ndjson, ndjson_error
from herd.api.wire import ollama as wire
from herd.errors import InvalidRequest, ServiceError
from litestar import Request, Response, delete, head, post
from litestar.datastructures import State
from litestar.response import Stream

AnyRequest = Request[object, object, State]


def _store(state: State) -> ModelStore:
    store = state.store
    assert isinstance(store, ModelStore)
    store.require_ready()
    return store


@head("/api/blobs/{digest:str}")
async def blob_exists(digest: str, state: State) -> Response[None]:
    parse_digest(digest)
    found = await asyncio.to_thread(_store(state).has_blob, digest)
    return Response(None, status_code=200 if found else 404)


# The body is streamed to disk with its own cap (HERD_BLOB_MAX_BYTES), not held by the app-wide body limit.
@post("/api/blobs/{digest:str}", request_max_body_size=None)
async def blob_upload(digest: str, request: AnyRequest, state: State) -> Response[None]:
    cap = gateway(state).settings.blob_max_bytes
    created = await receive_blob(_store(state), digest, request.stream(), cap)
    return Response(None, status_code=201 if created else 200)


async def _lines(progress: AsyncIterator[wire.ProgressResponse]) -> AsyncIterator[bytes]:
    try:
        async for item in progress:
            yield ndjson(item)
    except ServiceError as exc:
        yield ndjson_error(exc)


async def _replay(items: list[wire.ProgressResponse]) -> AsyncIterator[wire.ProgressResponse]:
    for item in items:
        yield item


@post("/api/create", status_code=200)
async def create(request: AnyRequest, state: State) -> Response[wire.ProgressResponse] | Stream:
    body = await decode(request, wire.CreateRequest)
    statuses = await asyncio.to_thread(create_model, _store(state), body)  # fails with a real status, before a byte
    if body.stream is False:
        return Response(statuses[-1])
    return Stream(_lines(_replay(statuses)), media_type=NDJSON_MEDIA_TYPE, headers=NDJSON_HEADERS)


@post("/api/copy", status_code=200, request_max_body_size=SMALL_BODY)
async def copy(request: AnyRequest, state: State) -> None:
    body = await decode(request, wire.CopyRequest)
    canonical_name(body.destination)
    await asyncio.to_thread(_store(state).copy, body.source, body.destination)


@delete("/api/delete", status_code=200, request_max_body_size=SMALL_BODY)
async def remove(request: AnyRequest, state: State) -> None:
    body = await decode(request, wire.DeleteRequest)
    name = canonical_name(body.model or body.name)
    gw = gateway(state)
    if gw.settings.model(name) is not None:
        raise InvalidRequest(f"model '{name}' is configured (HERD_MODELS or the bundled default); it stays listed")
    await asyncio.to_thread(_store(state).delete, name)
    await gw.loads.set_keep_alive(name, 0)  # a loaded worker for it exits once idle


@post("/api/pull", status_code=200, request_max_body_size=SMALL_BODY)
async def pull(request: AnyRequest, state: State) -> Response[wire.ProgressResponse] | Stream:
    body = await decode(request, wire.PullRequest)
    model = body.model or body.name
    settings = gateway(state).settings
    resolve_name(model, settings)  # a bad name or a source not allowed: a real 400 before any line
    progress = Puller(_store(state), settings, model).run()
    if body.stream is not False:
        return Stream(_lines(progress), media_type=NDJSON_MEDIA_TYPE, headers=NDJSON_HEADERS)

    async def last() -> wire.ProgressResponse:
        final = wire.ProgressResponse(status="")
        async for item in progress:
            final = item
        return final

    return Response(await unless_gone(request, last()))


ROUTES = [blob_exists, blob_upload, create, copy, remove, pull]
