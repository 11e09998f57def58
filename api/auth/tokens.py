"""Bearer JWT access tokens (RFC 9068): keys only from a configured JWKS or herd's own issuer, an explicit algorithm
allow-list checked before any key is looked up, the signature checked by joserfc, then the RFC 9068 profile by
authlib's claims validator (authlib.oauth2.rfc9068): `typ` at+jwt, exact `iss` and `aud`, `exp`, `sub`, `client_id`,
`iat` and `jti` required. A JWKS cache that an unknown-kid spray cannot turn into a flood of fetches (and that keeps
working while the IdP is down).

authlib's JWTBearerTokenValidator itself is not used: its key lookup is synchronous (a JWKS fetch would block the
event loop), it decodes with joserfc's default algorithm list (which leaves out PS256), and it validates without
leeway. Its claims class is what it uses, with the same claim options."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from typing import Protocol

import httpx
from authlib.oauth2.rfc9068.claims import JWTAccessTokenClaims
from herd.api.auth.principal import Principal
from herd.errors import Unauthenticated, Unavailable
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

log = logging.getLogger("herd.api.auth")

Key = RSAKey | ECKey | OKPKey
MAX_TOKEN_BYTES = 8192  # checked before any parsing: a huge token costs nothing
MAX_JWKS_BYTES = 1 << 20
# The key type each algorithm family must be verified with: an RSA public key can never act as an HMAC secret.
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
# RFC 9068 2.1 and 4: the media type of a JWT access token. Checked by herd when absent too (authlib's claims class
# lets a token without `typ` through, and an ID token or any other JWT signed by the IdP has none or another one).
ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")


class KeySource(Protocol):
    async def key(self, kid: str | None) -> Key: ...


def _segment(part: str) -> dict[str, object]:
    try:
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError, RecursionError) as exc:  # RecursionError: a header of 3,000 nested arrays
        raise Unauthenticated("the bearer token is not a well-formed JWT") from exc
    if not isinstance(value, dict):
        raise Unauthenticated("the bearer token is not a well-formed JWT")
    return value


def _usable(keys: KeySet) -> dict[str | None, Key]:
    """Signature keys by kid (a lone key without kid is also found under None)."""
    found: dict[str | None, Key] = {}
    for key in keys.keys:
        if isinstance(key, RSAKey | ECKey | OKPKey) and key.get("use", "sig") == "sig":
            found[key.kid] = key
    if len(found) == 1:
        found[None] = next(iter(found.values()))
    return found


class JwksKeys:
    """An IdP's JWKS (from its URL or its discovery document), cached; re-read when stale or when a token names an
    unknown kid, but never more than once per `min_refresh_s`. Keys already fetched keep working when it is down."""

    def __init__(
        self, http: httpx.AsyncClient, jwks_url: str, discovery_url: str, ttl_s: float, min_refresh_s: float
    ) -> None:
        self._http = http
        self._jwks_url = jwks_url
        self._discovery_url = discovery_url
        self._ttl_s = ttl_s
        self._min_refresh_s = min_refresh_s
        self.issuer: str | None = None  # from the discovery document, when there is one
        self._keys: dict[str | None, Key] = {}
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0  # JWKS requests made (tests and logs)

    async def key(self, kid: str | None) -> Key:
        now = time.monotonic()
        if (kid not in self._keys or now - self._fetched_at > self._ttl_s) and self._may_fetch(now):
            async with self._lock:
                if self._may_fetch(time.monotonic()):
                    await self._refresh()
        key = self._keys.get(kid)
        if key is not None:
            return key
        if not self._keys:  # nothing to check with: our problem, not the client's
            raise Unavailable("the identity provider's keys could not be fetched; try again shortly")
        raise Unauthenticated("the token's signing key (kid) is not one the identity provider publishes")

    async def discover(self) -> str | None:
        """The issuer named by the discovery document (fetched with the keys)."""
        if self._discovery_url and self.issuer is None and self._may_fetch(time.monotonic()):
            async with self._lock:
                if self.issuer is None and self._may_fetch(time.monotonic()):
                    await self._refresh()
        return self.issuer

    def _may_fetch(self, now: float) -> bool:
        return now - self._attempted_at >= self._min_refresh_s

    async def _get(self, url: str) -> dict[str, object]:
        resp = await self._http.get(url, timeout=5.0)
        resp.raise_for_status()
        if len(resp.content) > MAX_JWKS_BYTES:
            raise ValueError(f"{url} answered more than {MAX_JWKS_BYTES} bytes")
        body = resp.json()
        if not isinstance(body, dict):
            raise ValueError(f"{url} did not answer a JSON object")
        return body

    async def _refresh(self) -> None:
        self._attempted_at = time.monotonic()
        try:
            url = self._jwks_url
            if self._discovery_url:
                meta = await self._get(self._discovery_url)
                self.issuer = str(meta["issuer"])
                url = url or str(meta["jwks_uri"])
            self.fetches += 1
            keys = _usable(KeySet.import_key_set(await self._get(url)))  # type: ignore[arg-type]
        except (httpx.HTTPError, ValueError, KeyError, JoseError) as exc:
            log.warning("could not refresh the identity provider's keys (keeping %d cached): %s", len(self._keys), exc)
            return
        self._keys = keys
        self._fetched_at = time.monotonic()


class Validator:
    """Turns a bearer JWT into a Principal, or raises Unauthenticated. Tokens of each issuer are checked only
    against that issuer's keys."""

    def __init__(
        self,
        issuers: dict[str, KeySource],
        external: JwksKeys | None,
        audience: str,
        algorithms: list[str],
        leeway_s: int,
    ) -> None:
        self._issuers = issuers
        self._external = external  # an IdP whose issuer comes from discovery
        self._audience = audience
        # Never `none`, never HMAC: the keys are public, so an HS* "signature" could be forged with them.
        self._algorithms = [a for a in algorithms if a[:2] in _KEY_TYPES]
        self._leeway_s = leeway_s

    async def validate(self, token: str) -> tuple[Principal, float]:
        """The principal and the token's expiry (epoch seconds)."""
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("the bearer token is too large")
        parts = token.split(".")
        if len(parts) != 3:
            raise Unauthenticated("the bearer token is not a well-formed JWT")
        header, unverified = _segment(parts[0]), _segment(parts[1])
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise Unauthenticated(f"the token's algorithm {alg!r} is not accepted")
        if "crit" in header:
            raise Unauthenticated("the token has critical header parameters herd does not understand")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES:
            raise Unauthenticated(f"the token's type (typ {typ!r}) is not at+jwt: it is not an OAuth2 access token")
        kid = header.get("kid")
        source = await self._source(unverified.get("iss"))
        key = await source.key(kid if isinstance(kid, str) else None)
        if key.key_type != _KEY_TYPES[alg[:2]] or key.get("alg", alg) != alg:
            raise Unauthenticated("the token's algorithm does not match its key")
        try:
            decoded = jwt.decode(token, key, algorithms=[alg])
        except (JoseError, ValueError) as exc:
            raise Unauthenticated("the token's signature is not valid") from exc
        claims = JWTAccessTokenClaims(
            decoded.claims, decoded.header, _claim_options(str(unverified["iss"]), self._audience)
        )
        try:
            claims.validate(leeway=self._leeway_s)
        except JoseError as exc:
            raise Unauthenticated(_claim_message(exc)) from exc
        return Principal(subject=str(claims["sub"]), scopes=_scopes(claims), via="jwt"), float(claims["exp"])

    async def _source(self, issuer: object) -> KeySource:
        if isinstance(issuer, str):
            source = self._issuers.get(issuer)
            if source is not None:
                return source
            if self._external is not None and issuer == await self._external.discover():
                return self._external
        raise Unauthenticated("the token's issuer is not trusted here")


def _claim_options(issuer: str, audience: str) -> dict[str, dict[str, object]]:
    """RFC 9068 2.2's required claims, as authlib's JWTBearerTokenValidator states them (`iss` exactly the issuer whose
    key verified the signature: _source found a key source for it, so it is a string)."""
    essential: dict[str, object] = {"essential": True}
    return {
        "iss": {"essential": True, "value": issuer},
        "aud": {"essential": True, "value": audience},
        **{name: dict(essential) for name in ("exp", "sub", "client_id", "iat", "jti")},
    }


def _claim_message(exc: JoseError) -> str:
    name = getattr(exc, "error", "") or type(exc).__name__
    return f"the token was refused ({name}: {exc.description or 'invalid claims'})"


def _scopes(claims: dict[str, object]) -> frozenset[str]:
    """OAuth's space-separated `scope`, or the `scp` array some IdPs use."""
    scope, scp = claims.get("scope"), claims.get("scp")
    found: set[str] = set()
    for value in (scope, scp):
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(str(v) for v in value)
    return frozenset(found)
