"""Authentication and rate limiting at the door: the middleware that puts a Principal in scope["auth"] (API key or
bearer JWT), checks the route's scope (api/auth/access.py) and the caller's per-minute budgets (api/auth/ratelimit.py).
Neither is installed when both are off, so they cost nothing then."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from herd.api.auth.access import CLOSED, OPEN, required
from herd.api.auth.credentials import Credential
from herd.api.auth.introspection import Introspector
from herd.api.auth.principal import ANONYMOUS, Principal
from herd.api.auth.ratelimit import METER, Meter, Quotas, headers
from herd.api.auth.tokens import Validator
from herd.api.ids import request_id_of
from herd.errors import Forbidden, ServiceError, Unauthenticated
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("herd.api.auth")

_CACHE_MAX = 4096
_METER_STATE = "herd_meter"


class Authenticator:
    """Credentials to principals: API keys by the hash of the key, JWTs through the validator (results cached
    until the token expires, so a client reusing its token pays for the signature check once), and any other bearer
    token through the IdP's introspection endpoint when one is configured (it keeps its own cache)."""

    def __init__(
        self, keys: list[Credential], validator: Validator | None, introspector: Introspector | None = None
    ) -> None:
        self._keys = {k.digest: Principal(subject=f"key:{k.name}", scopes=k.scopes, via="api_key") for k in keys}
        self._validator = validator
        self._introspector = introspector
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def authenticate(self, authorization: str | None, now: float) -> Principal:
        if not authorization:
            raise Unauthenticated("You didn't provide an API key or bearer token.", token_error=None)
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthenticated("Use `Authorization: Bearer <API key or token>`.", token_error="invalid_request")
        is_jwt = credential.count(".") == 2
        if not is_jwt:  # an API key, looked up by its hash (never compared as text), or an IdP's opaque token
            principal = self._keys.get(hashlib.sha256(credential.encode()).hexdigest())
            if principal is not None:
                return principal
            if self._introspector is None:
                raise Unauthenticated("Incorrect API key provided.")
        if not is_jwt or self._validator is None:
            if self._introspector is None:
                raise Unauthenticated("bearer tokens are not accepted by this server (no issuer is configured)")
            principal, _ = await self._introspector.validate(credential)
            return principal
        cached = self._cache.get(credential)
        if cached is not None and cached[1] > now:
            return cached[0]
        principal, expires = await self._validator.validate(credential)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()  # crude, but bounded: a flood of distinct valid tokens is the IdP's doing
        self._cache[credential] = (principal, expires)
        return principal


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def access_control(
    authenticator: Authenticator | None,
    quotas: Quotas,
    metrics_scope: str,
    limits: tuple[int, int],
    overrides: dict[str, tuple[int, int]],
) -> Callable[[ASGIApp], ASGIApp]:
    """The middleware. `authenticator` None: auth off (everyone is ANONYMOUS; limits, if any, are shared).
    `limits`: requests and tokens per minute for every principal, unless `overrides` names its subject."""
    metered = any(limits) or any(any(v) for v in overrides.values())

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            need = required(scope["method"], scope["path"], metrics_scope)
            if need == OPEN:
                await app(scope, receive, send)
                return
            principal = ANONYMOUS
            if authenticator is not None:
                try:
                    principal = await authenticator.authenticate(_header(scope, b"authorization"), time.time())
                    if need == CLOSED or need not in principal.scopes:
                        raise Forbidden(
                            f"This credential lacks the scope this route needs ({need if need != CLOSED else 'none'}).",
                            scope=need if need != CLOSED else "",
                        )
                except (Unauthenticated, Forbidden) as exc:
                    request_id_of(scope)  # so the log line carries it
                    log.info("refused %s %s: %s", scope["method"], scope["path"], exc.message)
                    raise
            scope["auth"] = principal
            rpm, tpm = overrides.get(principal.subject, limits) if metered else (0, 0)
            if not (rpm or tpm):
                await app(scope, receive, send)
                return
            meter = Meter(principal.subject, rpm, tpm, quotas)
            scope.setdefault("state", {})[_METER_STATE] = meter  # for the headers, on errors too
            token = METER.set(meter)
            try:
                await meter.admit()
                await app(scope, receive, send)
            finally:
                METER.reset(token)
                try:
                    await meter.settle()
                except ServiceError as exc:  # the response is out; an unsettled estimate only errs on the safe side
                    log.warning("could not settle the token budget of %s: %s", principal.subject, exc)

        return middleware

    return factory


async def add_rate_limit_headers(message: Message, scope: Scope) -> None:
    """x-ratelimit-* on every response of a metered request, a 429 included."""
    if message["type"] == "http.response.start":
        meter = scope.get("state", {}).get(_METER_STATE)
        if isinstance(meter, Meter) and meter.buckets:
            response_headers = MutableScopeHeaders.from_message(message)
            for name, value in headers(meter.buckets).items():
                response_headers[name] = value
