"""herd's OpenAPI 3.1 document, published at /openapi.json: Litestar's paths, with the request and reply schemas of
the JSON routes generated from the msgspec wire types (the routes decode their bodies themselves, so Litestar alone
would not know them). tests/test_openapi.py checks that every route taking a JSON body is listed in BODIES."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata
from typing import Any

import msgspec
from herd.api.wire import batch, ollama, openai, responses, ui
from litestar import Litestar, get
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.types import ControllerRouterHandler

PATH = "/openapi.json"
_REF = "#/components/schemas/{name}"

# (method, path) -> the wire type of the JSON body the route decodes.
BODIES: dict[tuple[str, str], type] = {
    ("POST", "/v1/chat/completions"): openai.ChatCompletionRequest,
    ("POST", "/v1/completions"): openai.CompletionRequest,
    ("POST", "/v1/embeddings"): openai.EmbeddingCreateParams,
    ("POST", "/v1/batches"): batch.BatchCreateParams,
    ("POST", "/v1/responses"): responses.ResponseCreateParams,
    ("POST", "/v1/ui/chat"): ui.UIChatRequest,
    ("POST", "/api/chat"): ollama.ChatRequest,
    ("POST", "/api/generate"): ollama.GenerateRequest,
    ("POST", "/api/embed"): ollama.EmbedRequest,
    ("POST", "/api/embeddings"): ollama.EmbeddingsRequest,
    ("POST", "/api/show"): ollama.ShowRequest,
    ("POST", "/api/create"): ollama.CreateRequest,
    ("POST", "/api/copy"): ollama.CopyRequest,
    ("DELETE", "/api/delete"): ollama.DeleteRequest,
    ("POST", "/api/pull"): ollama.PullRequest,
}

# (method, path) -> the wire type of a successful JSON reply, and whether the route may stream instead.
REPLIES: dict[tuple[str, str], tuple[type, str | None]] = {
    ("POST", "/v1/chat/completions"): (openai.ChatCompletion, "text/event-stream"),
    ("POST", "/v1/completions"): (openai.Completion, "text/event-stream"),
    ("POST", "/v1/embeddings"): (openai.CreateEmbeddingResponse, None),
    ("GET", "/v1/models"): (openai.ModelList, None),
    ("POST", "/api/chat"): (ollama.ChatResponse, "application/x-ndjson"),
    ("POST", "/api/generate"): (ollama.GenerateResponse, "application/x-ndjson"),
    ("POST", "/api/embed"): (ollama.EmbedResponse, None),
}

# Routes whose 503 is their own report, not an error body (a readiness probe says why it is not ready).
NOT_READY = {("GET", "/readyz")}

# Routes that take a body that is not JSON (multipart uploads, blobs, forms): documented by Litestar as they are.
NOT_JSON = {("POST", "/v1/files"), ("POST", "/api/blobs/{digest}"), ("POST", "/oauth/token")}


def document(handlers: Sequence[ControllerRouterHandler], auth_on: bool) -> dict[str, Any]:
    """The document for an app serving `handlers` (a throwaway Litestar app computes the paths; it is never run)."""
    config = OpenAPIConfig(title="herd", version=metadata.version("herd"), path="/_unused")
    doc: dict[str, Any] = Litestar(route_handlers=list(handlers), openapi_config=config).openapi_schema.to_schema()
    types = sorted(
        {*BODIES.values(), *(t for t, _ in REPLIES.values()), openai.ErrorResponse, ollama.ErrorResponse},
        key=lambda t: f"{t.__module__}.{t.__qualname__}",
    )
    refs, components = msgspec.json.schema_components(types, schema_hook=_any, ref_template=_REF)
    ref_of = dict(zip(types, refs, strict=True))
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(components)
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            key = (method.upper(), path)
            if key in BODIES:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": ref_of[BODIES[key]]}},
                }
            if key in REPLIES:
                kind, stream = REPLIES[key]
                content: dict[str, Any] = {"application/json": {"schema": ref_of[kind]}}
                if stream:
                    content[stream] = {"schema": {"type": "string"}}
                operation.setdefault("responses", {})["200"] = {"description": "The reply", "content": content}
            error = ollama.ErrorResponse if path.startswith("/api/") else openai.ErrorResponse
            responses = operation.setdefault("responses", {})
            for status in [s for s in responses if s[0] in "45"]:
                del responses[status]  # Litestar's own error shape: herd renders OpenAI's or Ollama's (api/errors.py)
            responses["default"] = {
                "description": "An error",
                "content": {"application/json": {"schema": ref_of[error]}},
            }
            if key in NOT_READY and "200" in responses:
                responses["503"] = {**responses["200"], "description": "Not ready: the same report"}
            if auth_on:
                operation.setdefault("security", [{"bearer": []}])
    if auth_on:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


def _any(kind: type) -> dict[str, Any]:
    """Free-form fields (`object`: a JSON schema, Ollama's format) accept any JSON value."""
    if kind is object:
        return {"description": "any JSON value"}
    raise NotImplementedError(kind)


def route(handlers: Sequence[ControllerRouterHandler], auth_on: bool) -> Any:
    """GET /openapi.json, built on its first request and kept in app.state."""

    @get(PATH, include_in_schema=False)
    async def openapi_json(state: State) -> dict[str, Any]:
        if getattr(state, "openapi", None) is None:
            state.openapi = document(handlers, auth_on)
        found: dict[str, Any] = state.openapi
        return found

    return openapi_json
