"""Logging setup: one JSON object per line (time, level, logger, message, request id, trace id), or plain text.

What is logged is decided where log calls are written: ids, counts and reasons, never prompts, completions,
credentials or tokens (tests/test_auth.py greps a whole server log for sentinels).
"""

from __future__ import annotations

import contextvars
import json
import logging
import time

from opentelemetry import trace

# The request being handled in this context (set by api/ids.py when the request's id is made).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("herd_request_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = f"{context.trace_id:032x}"
            entry["span_id"] = f"{context.span_id:016x}"
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
