"""The HTTP server span and `http.server.request.duration` of every request, by the OpenTelemetry HTTP conventions.

Installed around Litestar's whole ASGI handler (outside the router), so it sees every request, routed or not. The
span is named `{method} {http.route}` with the route template Litestar matched (`/v1/files/{file_id}`, never a path
with an id in it; `{method}` alone when no route matched), honours the client's W3C `traceparent`/`tracestate`, and
is current while the request runs so the GenAI span and the job's trace context hang under it. A 5xx, or an error
the request's telemetry reports after the response started (an in-band error frame), sets status ERROR and
`error.type` (the ErrorKind when known, else the status code). One span per request, not per SSE chunk.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass

from herd.api.telemetry.metrics import Metrics
from herd.tracing import context_from
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode, Tracer, use_span

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"})


@dataclass(slots=True)
class ServerRequest:
    """What the request's own code tells the server span: the error it ended with, even after a 200 went out."""

    span: Span
    scope: Scope
    error_type: str | None = None

    @property
    def route(self) -> str:
        """The route template Litestar matched ("" before routing, or when none did)."""
        return str(self.scope.get("path_template") or "")

    def fail(self, error_type: str) -> None:
        self.error_type = error_type


# The request being served, for code deeper down (api/telemetry/genai.py): a copy of the context goes to every task the
# handler starts, and they all share this one object.
CURRENT: ContextVar[ServerRequest | None] = ContextVar("herd_server_request", default=None)


def _host_port(host: str, scheme: str) -> tuple[str, int]:
    default = 443 if scheme == "https" else 80
    if host.startswith("["):  # [v6]:port
        address, _, rest = host[1:].partition("]")
        return address, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else default
    address, _, port = host.partition(":")
    return address, int(port) if port.isdigit() else default


def _start_attributes(scope: HTTPScope, headers: dict[str, str]) -> dict[str, str | int]:
    method = str(scope["method"])
    scheme = str(scope.get("scheme", "http"))
    attributes: dict[str, str | int] = {
        "http.request.method": method if method in KNOWN_METHODS else "_OTHER",
        "url.scheme": scheme,
        "url.path": str(scope["path"]),
    }
    if method not in KNOWN_METHODS:
        attributes["http.request.method_original"] = method
    if "host" in headers:
        attributes["server.address"], attributes["server.port"] = _host_port(headers["host"], scheme)
    if "user-agent" in headers:
        attributes["user_agent.original"] = headers["user-agent"]
    if scope.get("http_version"):
        attributes["network.protocol.version"] = str(scope["http_version"])
    client = scope.get("client")
    if client:
        attributes["client.address"] = str(client[0])
    return attributes


def span_name(method: str, route: str | None) -> str:
    method = method if method in KNOWN_METHODS else "HTTP"
    return f"{method} {route}" if route else method


def instrument(app: Litestar, tracer: Tracer | None, metrics: Metrics) -> None:
    """Wrap `app`'s ASGI handler (every HTTP request, routed or not) with the server span and duration metric."""
    app.asgi_handler = server_telemetry(app.asgi_handler, tracer, metrics)


def server_telemetry(app: ASGIApp, tracer: Tracer | None, metrics: Metrics) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        attributes = _start_attributes(scope, headers)
        span: Span = INVALID_SPAN
        if tracer is not None:
            parent = context_from(headers.get("traceparent"), headers.get("tracestate"))
            method = str(attributes["http.request.method"])
            span = tracer.start_span(span_name(method, None), parent, SpanKind.SERVER, attributes)
        served = ServerRequest(span, scope)
        status = 0

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                span.set_attribute("http.response.status_code", status)
            await send(message)

        token = CURRENT.set(served)
        try:
            with use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                await app(scope, receive, send_with_status)
        except Exception as exc:  # not a cancellation: a server going down is not this request's failure
            served.error_type = served.error_type or type(exc).__qualname__
            raise
        finally:
            CURRENT.reset(token)
            _finish(scope, served, status, attributes, metrics, time.perf_counter() - started)

    return middleware


def _finish(
    scope: HTTPScope,
    served: ServerRequest,
    status: int,
    attributes: dict[str, str | int],
    metrics: Metrics,
    seconds: float,
) -> None:
    route = scope.get("path_template")
    span = served.span
    error_type = served.error_type if served.error_type is not None else str(status) if status >= 500 else None
    if route:
        span.set_attribute("http.route", str(route))
    span.update_name(span_name(str(scope["method"]), str(route) if route else None))
    if error_type is not None:
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, error_type))
    span.end()
    labels: list[tuple[str, str]] = [
        ("http.request.method", str(attributes["http.request.method"])),
        ("url.scheme", str(attributes["url.scheme"])),
        ("http.route", str(route) if route else ""),
        ("http.response.status_code", str(status)),
    ]
    if error_type is not None:
        labels.append(("error.type", error_type))
    context = span.get_span_context()
    exemplar = (f"{context.trace_id:032x}", f"{context.span_id:016x}") if context.is_valid else None
    metrics.observe_http(tuple(labels), seconds, exemplar)
