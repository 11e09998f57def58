"""create_app(settings) -> Litestar: wiring of routes, error rendering, request ids and the gateway's lifetime."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from arq.connections import ArqRedis
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException

from api.errors import TABLE, openai_body, openai_headers
from api.gateway import Gateway
from api.ids import add_request_id
from api.routes import health, openai
from shared.config import Settings
from shared.errors import EngineError, ServiceError
from shared.wire.openai import ErrorDetail, ErrorResponse

log = logging.getLogger("herd.api")


def _service_error(settings: Settings) -> object:
    def handler(_: Request[object, object, State], exc: ServiceError) -> Response[ErrorResponse]:
        return Response(
            openai_body(exc),
            status_code=TABLE[exc.kind].status,
            headers=openai_headers(exc, settings.retry_after_s),
        )

    return handler


def _http_error(_: Request[object, object, State], exc: HTTPException) -> Response[ErrorResponse]:
    status = exc.status_code
    kind = "invalid_request_error" if status < 500 else "server_error"
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(status)
    detail = ErrorDetail(message=str(exc.detail), type=kind, param=None, code=code)
    return Response(ErrorResponse(detail), status_code=status, headers=exc.headers or None)


def _unexpected(_: Request[object, object, State], exc: Exception) -> Response[ErrorResponse]:
    log.exception("unhandled error", exc_info=exc)
    body = openai_body(EngineError("internal error; the server log has details"))
    return Response(body, status_code=500, headers={"x-should-retry": "false"})


def create_app(settings: Settings) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        redis = ArqRedis.from_url(settings.redis_url, socket_connect_timeout=2, health_check_interval=10)
        gateway = Gateway(settings, redis, secrets.token_hex(6))
        await gateway.start()
        app.state.gateway = gateway
        app.state.started_at = time.time()
        try:
            yield
        finally:
            await gateway.close()
            await redis.aclose()

    return Litestar(
        route_handlers=[*health.ROUTES, *openai.ROUTES],
        lifespan=[lifespan],
        before_send=[add_request_id],
        exception_handlers={
            ServiceError: _service_error(settings),  # type: ignore[dict-item]
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        openapi_config=None,
        request_max_body_size=16 * 1024 * 1024,
    )
