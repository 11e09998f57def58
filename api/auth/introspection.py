"""Opaque bearer tokens by RFC 7662 introspection: herd asks the IdP's introspection endpoint about a token it cannot
read itself, with authlib's OAuth2 client (authlib.integrations.httpx_client, client_secret_basic), and takes the
answer through authlib's introspection model and validator (authlib.oauth2.rfc7662: `active` must be true).

Answers are cached by the token's hash for what is left of the token's lifetime, but never longer than
`cache_s` (so a revocation at the IdP takes effect within it), in a cache of at most `cache_max` entries. A refusal
(`active: false`) is cached the same way, so a client retrying a dead token does not make herd ask again each time.
Concurrent requests with the same uncached token share one introspection call.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc6750 import InvalidTokenError
from authlib.oauth2.rfc7662 import IntrospectionToken, IntrospectTokenValidator
from herd.api.auth.principal import Principal
from herd.api.auth.tokens import MAX_TOKEN_BYTES
from herd.errors import Unauthenticated, Unavailable

try:  # authlib's httpx integration is built on httpx2 when that is installed (else on httpx): catch what it raises
    from httpx2 import HTTPError as ClientHTTPError
except ImportError:  # pragma: no cover - depends on the environment
    from httpx import HTTPError as ClientHTTPError  # type: ignore[assignment]

log = logging.getLogger("herd.api.auth")

MAX_ANSWER_BYTES = 64 * 1024


class Introspector:
    """Bearer token -> Principal through the IdP's introspection endpoint (RFC 7662), cached."""

    def __init__(
        self,
        client: AsyncOAuth2Client,
        url: str,
        audience: str,
        leeway_s: int,
        cache_s: float,
        cache_max: int,
    ) -> None:
        self._client = client
        self._url = url
        self._audience = audience
        self._leeway_s = leeway_s
        self._cache_s = cache_s
        self._cache_max = cache_max
        self._validator = IntrospectTokenValidator()
        # token hash -> (principal or refusal message, monotonic time the entry expires)
        self._cache: OrderedDict[str, tuple[Principal | str, float]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[tuple[Principal | str, float]]] = {}
        self.calls = 0  # introspection requests made (tests and logs)

    async def validate(self, token: str) -> tuple[Principal, float]:
        """The principal and when herd stops trusting this answer (epoch seconds), or Unauthenticated."""
        if len(token) > MAX_TOKEN_BYTES:  # not worth a call to the IdP
            raise Unauthenticated("the bearer token is too large")
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            answer, until = cached
        else:
            answer, until = await self._shared(key, token)
        if isinstance(answer, str):
            raise Unauthenticated(answer)
        return answer, time.time() + (until - time.monotonic())

    async def _shared(self, key: str, token: str) -> tuple[Principal | str, float]:
        """One introspection per token at a time, in a task of its own: a caller that goes away (its client hung
        up) does not cancel it for the others waiting on the same token."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._introspect(token))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settle(key, done))
        return await asyncio.shield(task)

    def _settle(self, key: str, task: asyncio.Task[tuple[Principal | str, float]]) -> None:
        del self._inflight[key]
        if not task.cancelled() and task.exception() is None:  # exception(): retrieved, so never "unretrieved"
            self._remember(key, task.result())

    def _remember(self, key: str, result: tuple[Principal | str, float]) -> None:
        self._cache.pop(key, None)
        if len(self._cache) >= self._cache_max:
            now = time.monotonic()
            for stale in [k for k, (_, until) in self._cache.items() if until <= now]:
                del self._cache[stale]
            while len(self._cache) >= self._cache_max:
                self._cache.popitem(last=False)  # the oldest answer goes first
        self._cache[key] = result

    async def _introspect(self, token: str) -> tuple[Principal | str, float]:
        self.calls += 1
        try:
            resp = await self._client.introspect_token(self._url, token=token, token_type_hint="access_token")
            resp.raise_for_status()
            if len(resp.content) > MAX_ANSWER_BYTES:
                raise ValueError(f"the answer is larger than {MAX_ANSWER_BYTES} bytes")
            body = resp.json()
            if not isinstance(body, dict):
                raise ValueError("the answer is not a JSON object")
        except (httpx.HTTPError, ClientHTTPError, ValueError) as exc:
            log.warning("token introspection at %s failed: %s", self._url, exc)
            raise Unavailable("the identity provider could not be asked about the token; try again shortly") from exc
        answer = IntrospectionToken(body)
        now_epoch, now = time.time(), time.monotonic()
        refused_until = now + self._cache_s
        try:
            # `active` must be JSON true itself: a string "false" is truthy to authlib's check.
            self._validator.validate_token(answer if answer.get("active") is True else None, None, None)
        except InvalidTokenError:
            return "the token is not active (the identity provider's introspection says so)", refused_until
        exp = answer.get("exp")
        if exp is not None and not isinstance(exp, int | float):
            return "the introspection answer's exp is not a number", refused_until
        if exp is not None and exp + self._leeway_s <= now_epoch:
            return "the token has expired", refused_until
        nbf = answer.get("nbf")
        if isinstance(nbf, int | float) and nbf - self._leeway_s > now_epoch:
            return "the token is not valid yet", now + min(self._cache_s, nbf - self._leeway_s - now_epoch)
        aud = answer.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if aud is not None and self._audience not in audiences:
            return f"the token is not meant for this server (aud does not contain {self._audience!r})", refused_until
        subject = answer.get("sub") or (f"client:{answer['client_id']}" if answer.get("client_id") else None)
        if not isinstance(subject, str) or not subject:
            return "the introspection answer names no subject (sub or client_id)", refused_until
        lifetime = self._cache_s if exp is None else min(self._cache_s, float(exp) - now_epoch)
        principal = Principal(subject=subject, scopes=_scopes(answer.get("scope")), via="introspection")
        return principal, now + max(0.0, lifetime)


def _scopes(scope: object) -> frozenset[str]:
    return frozenset(scope.split()) if isinstance(scope, str) else frozenset()
