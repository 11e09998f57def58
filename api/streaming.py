"""SSE (OpenAI) and NDJSON (Ollama) framing as pure functions over wire objects and ServiceErrors."""

from __future__ import annotations

from typing import Any

import msgspec
from herd.api.errors import ollama_body, openai_body
from herd.errors import ServiceError

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
SSE_DONE = b"data: [DONE]\n\n"

_encoder = msgspec.json.Encoder()


def sse(payload: Any) -> bytes:
    """One `data:` frame; every payload is JSON (both OpenAI SDKs json-parse each one)."""
    return b"data: " + _encoder.encode(payload) + b"\n\n"


def sse_error(exc: ServiceError) -> bytes:
    """The in-band error frame sent after the 200 was committed; the caller follows it with SSE_DONE."""
    return sse(openai_body(exc))


NDJSON_MEDIA_TYPE = "application/x-ndjson"
NDJSON_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def ndjson(payload: Any) -> bytes:
    """One line: msgspec escapes every newline inside strings, so an object never spans lines or leaves a blank one."""
    return _encoder.encode(payload) + b"\n"


def ndjson_error(exc: ServiceError) -> bytes:
    """The in-band error line sent after the 200 was committed; the stream ends after it."""
    return ndjson(ollama_body(exc))
