"""The ServiceError tree: every failure herd reports, each with an ErrorKind. No HTTP here (see api/errors.py).

ServiceError
├── InvalidRequest          bad field, bad value, malformed body            (kind: invalid_request)
│   └── ContextLengthExceeded  prompt + max_tokens beyond the context        (kind: context_length_exceeded)
├── Unauthenticated         no, or a bad, credential                        (kind: unauthenticated)
├── Forbidden               a good credential without the scope the route needs (kind: forbidden)
├── RateLimited             the caller's requests or tokens per minute ran out (kind: rate_limited)
├── ModelNotFound           no such model                                   (kind: model_not_found)
├── NotFound                no such file or batch (or not the caller's)     (kind: not_found)
├── Overloaded              the model's queue is full                       (kind: overloaded)
├── Unavailable             no live worker / Redis unreachable / queue wait too long (kind: unavailable)
├── WorkerLost              the worker died while serving the request       (kind: worker_lost)
├── StreamBroken            an event went missing between worker and API    (kind: stream_broken)
└── EngineError             llama.cpp failed while generating               (kind: engine_error)
"""

from __future__ import annotations

import enum


class ErrorKind(enum.StrEnum):
    INVALID_REQUEST = "invalid_request"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    MODEL_NOT_FOUND = "model_not_found"
    NOT_FOUND = "not_found"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    WORKER_LOST = "worker_lost"
    STREAM_BROKEN = "stream_broken"
    ENGINE_ERROR = "engine_error"
    CANCELLED = "cancelled"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"


class ServiceError(Exception):
    kind: ErrorKind = ErrorKind.ENGINE_ERROR

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s


class InvalidRequest(ServiceError):
    kind = ErrorKind.INVALID_REQUEST


class ContextLengthExceeded(InvalidRequest):
    kind = ErrorKind.CONTEXT_LENGTH_EXCEEDED


class Unauthenticated(ServiceError):
    """`token_error` is RFC 6750's error code for the challenge: "invalid_token", or None when none was sent."""

    kind = ErrorKind.UNAUTHENTICATED

    def __init__(self, message: str, *, token_error: str | None = "invalid_token") -> None:
        super().__init__(message)
        self.token_error = token_error


class Forbidden(ServiceError):
    """`scope` is the scope the route needs, named in the challenge."""

    kind = ErrorKind.FORBIDDEN

    def __init__(self, message: str, *, scope: str) -> None:
        super().__init__(message)
        self.scope = scope


class RateLimited(ServiceError):
    kind = ErrorKind.RATE_LIMITED


class ModelNotFound(ServiceError):
    kind = ErrorKind.MODEL_NOT_FOUND


class NotFound(ServiceError):
    """Also what another caller gets for an object that exists but is not theirs: its existence is not revealed."""

    kind = ErrorKind.NOT_FOUND


class Overloaded(ServiceError):
    kind = ErrorKind.OVERLOADED


class Unavailable(ServiceError):
    kind = ErrorKind.UNAVAILABLE


class WorkerLost(ServiceError):
    kind = ErrorKind.WORKER_LOST


class StreamBroken(ServiceError):
    kind = ErrorKind.STREAM_BROKEN


class EngineError(ServiceError):
    kind = ErrorKind.ENGINE_ERROR


class Cancelled(ServiceError):
    kind = ErrorKind.CANCELLED


_BY_KIND: dict[ErrorKind, type[ServiceError]] = {
    cls.kind: cls
    for cls in (
        InvalidRequest,
        ContextLengthExceeded,
        ModelNotFound,
        NotFound,
        Overloaded,
        Unavailable,
        WorkerLost,
        StreamBroken,
        EngineError,
        Cancelled,
        RateLimited,
    )
}


def from_kind(kind: ErrorKind, message: str, param: str | None = None) -> ServiceError:
    """Rebuild the exception a worker reported (a Failed event carries only kind, message and param)."""
    return _BY_KIND.get(kind, EngineError)(message, param=param)
