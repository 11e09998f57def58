"""The HTTP server span of each request: W3C `traceparent` from the client honoured, one span per request (not per
SSE chunk), made current so the gateway's spans and the job's trace context hang under it."""

from __future__ import annotations

from collections.abc import Callable

from herd.tracing import context_from
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry.trace import SpanKind, Tracer


def server_spans(tracer: Tracer) -> Callable[[ASGIApp], ASGIApp]:
    def middleware_factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            traceparent = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"traceparent"), None)
            method, path = scope["method"], scope["path"]
            with tracer.start_as_current_span(
                f"{method} {path}",
                context=context_from(traceparent),
                kind=SpanKind.SERVER,
                attributes={"http.request.method": method, "url.path": path},
            ) as span:

                async def send_with_status(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        span.set_attribute("http.response.status_code", message["status"])
                    await send(message)

                await app(scope, receive, send_with_status)

        return middleware

    return middleware_factory
