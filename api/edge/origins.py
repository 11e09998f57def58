"""Browsers at the door: a request carrying an Origin that is not allowed is refused (403), whatever its content type,
and with auth off a Host that is not a loopback, literal-address or configured name is refused (DNS rebinding).

A web page can make a visitor's browser POST to http://127.0.0.1:8080 or a LAN address without a CORS preflight when
the body is sent as text/plain, so with auth off any site could drive a herd. Browsers always send Origin on such a
request; herd's own clients (SDKs, curl) send none, so `curl -d` without a JSON content type keeps working. A DNS
rebinding page reaches herd under the attacker's host name, which the Host check refuses; an IP literal cannot be
rebound, so it passes. Ollama answers the same holes the same way (OLLAMA_ORIGINS and its allowed-hosts check).
"""

from __future__ import annotations

import ipaddress
import re
import socket

import msgspec
from herd.api.errors import is_ollama_path
from herd.api.wire import ollama
from herd.api.wire.openai import ErrorDetail, ErrorResponse
from herd.config import Settings
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

_LOOPBACK_ORIGINS = tuple(
    f"{scheme}://{host}{port}"
    for scheme in ("http", "https")
    for host in ("localhost", "127.0.0.1", "[::1]")
    for port in ("", ":*")
)


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip().lower().rstrip("/") for part in value.split(",") if part.strip())


def _pattern(globs: tuple[str, ...]) -> re.Pattern[str]:
    """One regex for entries where only `*` is special (so `[::1]` is literal, unlike fnmatch)."""
    return re.compile("|".join(re.escape(glob).replace(r"\*", ".*") for glob in globs))


class Doorman:
    """Litestar middleware (a factory of ASGI apps): the Origin allow-list always, the Host allow-list with auth off."""

    def __init__(self, settings: Settings, auth_on: bool) -> None:
        self._origins = _pattern((*_LOOPBACK_ORIGINS, *_split(settings.origins)))
        self._check_host = not auth_on
        name = socket.gethostname().lower()
        self._hosts = _pattern(("localhost", "*.localhost", name, f"{name}.local", *_split(settings.allowed_hosts)))

    def origin_allowed(self, origin: str) -> bool:
        origin = origin.strip().lower()
        return self._origins.fullmatch(origin) is not None

    def host_allowed(self, host: str) -> bool:
        if not self._check_host or not host:
            return True  # no Host: not a browser (browsers always send one)
        name = host.strip().lower()
        if name.startswith("["):
            name = name[1:].partition("]")[0]
        elif name.count(":") == 1:
            name = name.partition(":")[0]
        try:
            ipaddress.ip_address(name)
            return True  # an address literal cannot be rebound to another host
        except ValueError:
            pass
        return self._hosts.fullmatch(name.rstrip(".")) is not None

    def __call__(self, app: ASGIApp) -> ASGIApp:
        async def door(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == ScopeType.HTTP:
                headers = dict(scope["headers"])
                origin = headers.get(b"origin")
                if origin is not None and not self.origin_allowed(origin.decode("latin-1")):
                    await _refuse(scope, send, "origin_not_allowed", "requests from this Origin are not allowed")
                    return
                if not self.host_allowed(headers.get(b"host", b"").decode("latin-1")):
                    await _refuse(scope, send, "host_not_allowed", "this Host is not allowed (see HERD_ALLOWED_HOSTS)")
                    return
            await app(scope, receive, send)

        return door


async def _refuse(scope: Scope, send: Send, code: str, message: str) -> None:
    body: object
    if is_ollama_path(scope["path"]):
        body = ollama.ErrorResponse(error=message)
    else:
        body = ErrorResponse(ErrorDetail(message=message, type="invalid_request_error", param=None, code=code))
    payload = msgspec.json.encode(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": 403, "headers": headers}
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": payload, "more_body": False}
    await send(end)
