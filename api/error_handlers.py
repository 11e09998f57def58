"""Litestar's exception handlers: every error rendered in the protocol of its path (Ollama's `{"error": "..."}` under
/api, OAuth's under /oauth, OpenAI's shape elsewhere) from the one table in api/errors.py."""

from __future__ import annotations

import logging

from herd.api.errors import (
    TABLE,
    OAuthError,
    is_oauth_path,
    is_ollama_path,
    oauth_error,
    ollama_body,
    ollama_headers,
    openai_body,
    openai_headers,
)
from herd.api.wire import ollama as ollama_wire
from herd.api.wire.openai import ErrorDetail, ErrorResponse
from herd.config import Settings
from herd.errors import EngineError, ServiceError, Unauthenticated
from litestar import Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException

log = logging.getLogger("herd.api")


# Errors are rendered in the protocol of the path: Ollama's `{"error": "..."}` under /api, OAuth's under /oauth,
# OpenAI's shape elsewhere.
ErrorBody = ErrorResponse | ollama_wire.ErrorResponse | OAuthError


def service_error(settings: Settings) -> object:
    def handler(request: Request[object, object, State], exc: ServiceError) -> Response[ErrorBody]:
        return _service_error_response(request, exc, settings.retry_after_s)

    return handler


def _service_error_response(
    request: Request[object, object, State], exc: ServiceError, retry_after_s: int
) -> Response[ErrorBody]:
    status = TABLE[exc.kind].status
    if is_oauth_path(request.url.path):
        status, body, headers = oauth_error(exc)
        return Response(body, status_code=status, headers={**headers, "cache-control": "no-store"})
    if is_ollama_path(request.url.path):
        return Response(ollama_body(exc), status_code=status, headers=ollama_headers(exc, retry_after_s))
    return Response(openai_body(exc), status_code=status, headers=openai_headers(exc, retry_after_s))


def http_error(auth_on: bool) -> object:
    def handler(request: Request[object, object, State], exc: HTTPException) -> Response[ErrorBody]:
        # The router answered before the auth middleware ran: a path nobody routes is closed too, so an anonymous
        # caller learns nothing from 404 vs 401. (Anyone with a credential gets the real answer.)
        routed = "auth" in request.scope or request.headers.get("authorization")
        if auth_on and exc.status_code in (404, 405) and not routed:
            refusal = Unauthenticated("You didn't provide an API key or bearer token.", token_error=None)
            return _service_error_response(request, refusal, 0)
        return _http_error_response(request, exc)

    return handler


def _http_error_response(request: Request[object, object, State], exc: HTTPException) -> Response[ErrorBody]:
    status = exc.status_code
    if is_ollama_path(request.url.path):
        return Response(ollama_wire.ErrorResponse(str(exc.detail)), status_code=status, headers=exc.headers or None)
    kind = "invalid_request_error" if status < 500 else "server_error"
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(status)
    detail = ErrorDetail(message=str(exc.detail), type=kind, param=None, code=code)
    return Response(ErrorResponse(detail), status_code=status, headers=exc.headers or None)


def unexpected(request: Request[object, object, State], exc: Exception) -> Response[ErrorBody]:
    log.exception("unhandled error", exc_info=exc)
    error = EngineError("internal error; the server log has details")
    if is_ollama_path(request.url.path):
        return Response(ollama_body(error), status_code=500)
    return Response(openai_body(error), status_code=500, headers={"x-should-retry": "false"})
