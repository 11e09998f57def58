"""CORS for the Origins herd allows (HERD_ORIGINS, plus loopback ones: the Doorman's one allow-list): preflights are
answered before authentication (browsers send no credentials on them), and replies carry Access-Control-Allow-Origin.

An Origin outside the list never gets here: the Doorman refuses it with a 403 first. Like Ollama (OLLAMA_ORIGINS),
the reply names the caller's Origin rather than `*`, so a page sending an Authorization header works too.
"""

from __future__ import annotations

from herd.api.edge.origins import Doorman
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseStartEvent, Message, Receive, Scope, Send

_METHODS = b"GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
# What the SDKs and useChat send; a preflight's own Access-Control-Request-Headers is echoed when present.
_HEADERS = b"Authorization, Content-Type, Accept, User-Agent, X-Requested-With, OpenAI-Organization, OpenAI-Project"
_EXPOSE = b"x-request-id, x-vercel-ai-ui-message-stream, retry-after, x-ratelimit-remaining-requests"
_MAX_AGE = b"600"


class Cors:
    """Litestar middleware (a factory of ASGI apps) for preflights, placed after the Doorman and before authentication;
    `before_send` adds the headers to every other reply, whichever layer made it."""

    def __init__(self, doorman: Doorman) -> None:
        self._doorman = doorman

    def __call__(self, app: ASGIApp) -> ASGIApp:
        async def cors(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            headers = dict(scope["headers"])
            origin = headers.get(b"origin")
            if origin is None or not self._doorman.origin_allowed(origin.decode("latin-1")):
                await app(scope, receive, send)
                return
            if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
                await _preflight(send, origin, headers.get(b"access-control-request-headers"))
                return
            await app(scope, receive, send)

        return cors

    async def before_send(self, message: Message, scope: Scope) -> None:
        """Every reply to an allowed Origin names it, errors included (a page reads why it got a 401)."""
        if message["type"] != "http.response.start":
            return
        origin = dict(scope["headers"]).get(b"origin")
        if origin is None or not self._doorman.origin_allowed(origin.decode("latin-1")):
            return
        headers = list(message.get("headers", []))
        if any(name.lower() == b"access-control-allow-origin" for name, _ in headers):
            return  # a preflight's own
        extra = [(b"access-control-allow-origin", origin), (b"access-control-expose-headers", _EXPOSE)]
        message["headers"] = [*headers, *extra, (b"vary", b"Origin")]


async def _preflight(send: Send, origin: bytes, requested: bytes | None) -> None:
    headers = [
        (b"access-control-allow-origin", origin),
        (b"access-control-allow-methods", _METHODS),
        (b"access-control-allow-headers", requested or _HEADERS),
        (b"access-control-max-age", _MAX_AGE),
        (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        (b"content-length", b"0"),
    ]
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": 204, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": b"", "more_body": False})
