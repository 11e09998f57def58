"""The published document lists the body of every route that decodes one: a route added later without its wire type
in herd.api.openapi.BODIES fails here (the fuzz in test_fuzz.py would otherwise never send it a body)."""

from __future__ import annotations

import inspect

import pytest
from herd.api.app import create_app
from herd.api.openapi import BODIES, NOT_JSON, document
from herd.api.routes import batches, files, models, ollama, openai, responses, ui_chat
from herd.config import load_settings
from litestar.handlers import HTTPRouteHandler

# Building the app in process: Litestar warns about another module's path-parameter style; not what this checks.
pytestmark = pytest.mark.filterwarnings("ignore::litestar.exceptions.LitestarDeprecationWarning")


def test_every_route_that_decodes_a_body_is_documented() -> None:
    app = create_app(load_settings({}))
    decoding: set[tuple[str, str]] = set()
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            if not isinstance(handler, HTTPRouteHandler):
                continue
            source = inspect.getsource(handler.fn)
            if "decode(request" in source:
                decoding.update((method, route.path) for method in handler.http_methods)
    assert decoding, "no route decodes a body: the check itself is broken"
    missing = decoding - set(BODIES) - NOT_JSON
    assert not missing, f"routes whose body the OpenAPI document does not describe: {sorted(missing)}"


def test_documented_bodies_exist_as_routes() -> None:
    handlers = [
        *openai.ROUTES,
        *responses.ROUTES,
        *ui_chat.ROUTES,
        *ollama.ROUTES,
        *models.ROUTES,
        *batches.ROUTES,
        *files.ROUTES,
    ]
    doc = document(handlers, auth_on=False)
    for method, path in BODIES:
        operation = doc["paths"][path][method.lower()]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].startswith("#/components/")
