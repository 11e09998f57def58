"""The built-in OAuth2 issuer for deployments without an IdP: client-credentials tokens (ES256 JWTs) signed with herd's
own keys, kept in Redis so every API replica signs and verifies with the same ones.

Rotation without coordination: time is cut into slots of `issuer_key_rotation_s`; the key of slot N has kid `herd-N`
and is created by whichever replica first needs it (HSETNX: the others adopt the winner's). A key stays published,
and accepted, until the last token it can have signed has expired.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
from herd import channels
from herd.api.auth.credentials import Credential, digest
from herd.api.auth.principal import ALL_SCOPES
from herd.errors import InvalidRequest, Unauthenticated
from herd.redisconn import map_redis_errors
from joserfc import jwt
from joserfc.jwk import ECKey
from redis.asyncio import Redis

if TYPE_CHECKING:
    from herd.api.auth.tokens import Key

ALGORITHM = "ES256"


class TokenResponse(msgspec.Struct):
    access_token: str
    expires_in: int
    scope: str
    token_type: str = "Bearer"


class _Stored(msgspec.Struct):
    jwk: dict[str, str | list[str]]
    not_after: float  # epoch: no token signed with this key is valid after it


class SigningKeys:
    """The issuer's keys as stored in Redis (channels.ISSUER_KEYS), cached in this process (re-read for an unknown kid,
    once a second). `redis` is resolved at first use: the client is made when the app starts."""

    def __init__(self, redis: Callable[[], Redis], rotation_s: int, token_ttl_s: int) -> None:
        self._redis = redis
        self._rotation_s = rotation_s
        self._token_ttl_s = token_ttl_s
        self._keys: dict[str, tuple[ECKey, float]] = {}
        self._read_at = float("-inf")

    async def signing_key(self) -> ECKey:
        slot = int(time.time() // self._rotation_s)
        kid = f"herd-{slot}"
        if kid not in self._keys:
            await self._reload()
        if kid not in self._keys:
            now = time.time()
            key = ECKey.generate_key("P-256", parameters={"kid": kid, "alg": ALGORITHM, "use": "sig"})
            # Valid for tokens signed until the slot ends, plus their lifetime.
            not_after = (slot + 1) * self._rotation_s + self._token_ttl_s
            value = msgspec.json.encode(_Stored(jwk=key.as_dict(private=True), not_after=not_after))
            expired = [k for k, (_, until) in self._keys.items() if until < now]
            stored = await self._add(kid, value, expired)
            self._remember(kid, stored)
        return self._keys[kid][0]

    async def key(self, kid: str | None) -> Key:
        if kid is None:
            raise Unauthenticated("the token names no key (kid)")
        if kid not in self._keys and time.monotonic() - self._read_at >= 1.0:
            await self._reload()
        found = self._keys.get(kid)
        if found is None or found[1] < time.time():
            raise Unauthenticated("the token's signing key (kid) is not one herd publishes")
        return found[0]

    async def published(self) -> dict[str, list[dict[str, str | list[str]]]]:
        """The JWKS: public halves of every key whose tokens may still be valid."""
        await self._reload()
        now = time.time()
        return {"keys": [key.as_dict(private=False) for key, until in self._keys.values() if until >= now]}

    async def _reload(self) -> None:
        self._read_at = time.monotonic()
        self._keys = {}
        with map_redis_errors():
            stored = await self._redis().hgetall(channels.ISSUER_KEYS)  # type: ignore[misc]
        for kid, value in stored.items():
            self._remember(kid.decode(), value)

    async def _add(self, kid: str, value: bytes, expired: list[str]) -> bytes:
        """Store `value` under `kid` unless another replica did first; returns the one stored. Drops `expired`."""
        with map_redis_errors():
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.hsetnx(channels.ISSUER_KEYS, kid, value)  # type: ignore[arg-type]
                pipe.hget(channels.ISSUER_KEYS, kid)
                if expired:
                    pipe.hdel(channels.ISSUER_KEYS, *expired)
                stored = (await pipe.execute())[1]
        assert isinstance(stored, bytes)
        return stored

    def _remember(self, kid: str, value: bytes) -> None:
        stored = msgspec.json.decode(value, type=_Stored)
        self._keys[kid] = (ECKey.import_key(stored.jwk), stored.not_after)


class Issuer:
    def __init__(self, url: str, audience: str, ttl_s: int, clients: list[Credential], keys: SigningKeys) -> None:
        self.url = url
        self._audience = audience
        self._ttl_s = ttl_s
        self._clients = {c.name: c for c in clients}
        self.keys = keys

    def client(self, client_id: str, secret: str) -> Credential:
        """The client whose secret this is; the same refusal whichever of the two is wrong."""
        client = self._clients.get(client_id)
        # Compare even for an unknown client, so the answer takes as long either way.
        expected = client.digest if client is not None else "0" * 64
        if not hmac.compare_digest(digest(secret), expected) or client is None:
            raise Unauthenticated("client authentication failed")
        return client

    async def token(self, client: Credential, requested: str | None) -> TokenResponse:
        scopes = client.scopes if requested is None else frozenset(requested.split())
        if not scopes <= client.scopes:
            raise InvalidRequest(
                f"the client may not have scope {' '.join(sorted(scopes - client.scopes))}", param="scope"
            )
        now = int(time.time())
        claims = {
            "iss": self.url,
            "sub": f"client:{client.name}",
            "aud": self._audience,
            "client_id": client.name,
            "scope": " ".join(sorted(scopes)),
            "iat": now,
            "nbf": now,
            "exp": now + self._ttl_s,
            "jti": secrets.token_hex(16),
        }
        key = await self.keys.signing_key()
        header = {"alg": ALGORITHM, "typ": "at+jwt", "kid": key.kid}
        token = jwt.encode(header, claims, key, algorithms=[ALGORITHM])
        return TokenResponse(access_token=token, expires_in=self._ttl_s, scope=claims["scope"])  # type: ignore[arg-type]

    def metadata(self) -> dict[str, object]:
        """RFC 8414 / OpenID discovery: enough for clients and resource servers to find the token endpoint and keys."""
        return {
            "issuer": self.url,
            "token_endpoint": f"{self.url}/oauth/token",
            "jwks_uri": f"{self.url}/.well-known/jwks.json",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "scopes_supported": sorted(ALL_SCOPES),
        }
