"""The one ErrorKind -> (status, type, code) table, with two renderers: OpenAI (`{"error": {...}}`) and Ollama
(`{"error": "..."}`). Both use the same statuses; which one answers depends on the path (see `is_ollama_path`)."""

from __future__ import annotations

import re

import msgspec
from herd.api.wire import ollama
from herd.api.wire.openai import ErrorDetail, ErrorResponse
from herd.errors import ErrorKind, Forbidden, InvalidRequest, ServiceError, Unauthenticated


class Rule(msgspec.Struct, frozen=True):
    status: int
    type: str
    code: str | None
    transient: bool = False  # clients may retry (Retry-After is sent)


TABLE: dict[ErrorKind, Rule] = {
    ErrorKind.INVALID_REQUEST: Rule(400, "invalid_request_error", None),
    ErrorKind.CONTEXT_LENGTH_EXCEEDED: Rule(400, "invalid_request_error", "context_length_exceeded"),
    ErrorKind.MODEL_NOT_FOUND: Rule(404, "invalid_request_error", "model_not_found"),
    ErrorKind.NOT_FOUND: Rule(404, "invalid_request_error", "not_found"),
    ErrorKind.OVERLOADED: Rule(503, "server_error", "overloaded", transient=True),
    ErrorKind.UNAVAILABLE: Rule(503, "server_error", "unavailable", transient=True),
    ErrorKind.WORKER_LOST: Rule(503, "server_error", "worker_lost", transient=True),
    ErrorKind.STREAM_BROKEN: Rule(502, "server_error", "stream_broken", transient=True),
    ErrorKind.ENGINE_ERROR: Rule(500, "server_error", "engine_error"),
    ErrorKind.CANCELLED: Rule(499, "server_error", "cancelled"),
    ErrorKind.UNAUTHENTICATED: Rule(401, "invalid_request_error", "invalid_api_key"),
    ErrorKind.FORBIDDEN: Rule(403, "invalid_request_error", "insufficient_scope"),
    # OpenAI's 429 body; clients retry it after Retry-After.
    ErrorKind.RATE_LIMITED: Rule(429, "requests", "rate_limit_exceeded", transient=True),
}


def openai_body(exc: ServiceError) -> ErrorResponse:
    rule = TABLE[exc.kind]
    return ErrorResponse(ErrorDetail(message=exc.message, type=rule.type, param=exc.param, code=rule.code))


def challenge(exc: ServiceError) -> dict[str, str]:
    """RFC 6750's WWW-Authenticate for a 401 or 403 (no error attribute when no credential was sent)."""
    if isinstance(exc, Unauthenticated):
        error = f', error="{exc.token_error}"' if exc.token_error else ""
        return {"www-authenticate": f'Bearer realm="herd"{error}'}
    if isinstance(exc, Forbidden):
        return {"www-authenticate": f'Bearer realm="herd", error="insufficient_scope", scope="{exc.scope}"'}
    return {}


def openai_headers(exc: ServiceError, default_retry_after_s: int) -> dict[str, str]:
    rule = TABLE[exc.kind]
    if rule.status in (401, 403):
        return challenge(exc)
    if not rule.transient:
        # Clients retry every 5xx unless told otherwise; a deterministic failure would fail again.
        return {"x-should-retry": "false"} if rule.status >= 500 else {}
    return {"retry-after": str(exc.retry_after_s or default_retry_after_s)}


def is_ollama_path(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def ollama_body(exc: ServiceError) -> ollama.ErrorResponse:
    return ollama.ErrorResponse(error=exc.message)


def ollama_headers(exc: ServiceError, default_retry_after_s: int) -> dict[str, str]:
    rule = TABLE[exc.kind]
    if rule.status in (401, 403):
        return challenge(exc)
    return {"retry-after": str(exc.retry_after_s or default_retry_after_s)} if rule.transient else {}


_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def from_validation(exc: msgspec.ValidationError | msgspec.DecodeError) -> InvalidRequest:
    """msgspec reports the offending field as a JSONPath suffix (`- at `$.messages[0].role``): lift it into param."""
    text = str(exc)
    match = _PATH.search(text)
    if isinstance(exc, msgspec.ValidationError) and match:
        path = match.group("path").lstrip(".")
        return InvalidRequest(f"Invalid value for '{path}': {text[: match.start()]}", param=path)
    if isinstance(exc, msgspec.ValidationError):
        # msgspec names no path when a top-level field is missing: its message names the field instead.
        missing = re.search(r"missing required field `(\w+)`", text)
        return InvalidRequest(f"{text}", param=missing.group(1) if missing else None)
    return InvalidRequest(f"We could not parse the JSON body of your request: {text}", param=None)


class OAuthError(msgspec.Struct):
    """RFC 6749's error body, for the built-in issuer's token endpoint."""

    error: str
    error_description: str


_OAUTH_CODES = {"grant_type": "unsupported_grant_type", "scope": "invalid_scope"}


def is_oauth_path(path: str) -> bool:
    return path.startswith("/oauth/")


def oauth_error(exc: ServiceError) -> tuple[int, OAuthError, dict[str, str]]:
    """Status, body and headers in OAuth's terms: a bad client is 401 invalid_client, a bad field 400."""
    if isinstance(exc, Unauthenticated):
        return 401, OAuthError("invalid_client", exc.message), {"www-authenticate": 'Basic realm="herd"'}
    if isinstance(exc, InvalidRequest):
        return 400, OAuthError(_OAUTH_CODES.get(exc.param or "", "invalid_request"), exc.message), {}
    rule = TABLE[exc.kind]
    return rule.status, OAuthError("temporarily_unavailable" if rule.transient else "server_error", exc.message), {}
