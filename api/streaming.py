"""SSE framing as pure functions over wire objects and ServiceErrors."""

from __future__ import annotations

from typing import Any

import msgspec

from api.errors import openai_body
from shared.errors import ServiceError

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
SSE_DONE = b"data: [DONE]\n\n"
SSE_KEEPALIVE = b": keep-alive\n\n"

_encoder = msgspec.json.Encoder()


def sse(payload: Any) -> bytes:
    """One `data:` frame; every payload is JSON (both OpenAI SDKs json-parse each one)."""
    return b"data: " + _encoder.encode(payload) + b"\n\n"


def sse_error(exc: ServiceError) -> bytes:
    """The in-band error frame sent after the 200 was committed; the caller follows it with SSE_DONE."""
    return sse(openai_body(exc))
