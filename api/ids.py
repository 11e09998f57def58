"""Request ids: one per HTTP request, on every response as x-request-id, and the id of its generation."""

from __future__ import annotations

import secrets

from herd.logs import REQUEST_ID
from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope


def request_id_of(scope: Scope) -> str:
    """The request's id: made on first use, so routes, errors and 404s all agree on it."""
    state = scope.setdefault("state", {})
    rid = state.get("request_id")
    if rid is None:
        rid = state["request_id"] = secrets.token_hex(12)
        REQUEST_ID.set(rid)  # log lines of this request carry it
    return str(rid)


async def add_request_id(message: Message, scope: Scope) -> None:
    if message["type"] == "http.response.start":
        MutableScopeHeaders.from_message(message)["x-request-id"] = request_id_of(scope)
