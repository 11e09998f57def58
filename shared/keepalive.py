"""Ollama's `keep_alive`: how long a model stays loaded after a request (a Go duration string or seconds)."""

from __future__ import annotations

import math
import re

from herd.errors import InvalidRequest

FOREVER = math.inf
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: str | float | int) -> float:
    """Seconds; 0 unloads after the request, a negative value keeps the model loaded forever (math.inf)."""
    if isinstance(value, bool):
        raise InvalidRequest("keep_alive must be a duration such as '5m' or a number of seconds", param="keep_alive")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)  # "300": Go would refuse a unitless string; seconds is the obvious reading
        except ValueError:
            parts = _PART.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise InvalidRequest(f"invalid keep_alive {value[:40]!r}", param="keep_alive") from None
            seconds = sign * sum(float(n) * _UNITS[u] for n, u in parts)
    if math.isnan(seconds):
        raise InvalidRequest("invalid keep_alive", param="keep_alive")
    return FOREVER if seconds < 0 else seconds
