"""Builds the API's security from Settings: API keys, the external IdP's JWKS, the built-in issuer, rate limits."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client
from herd.api.auth import credentials
from herd.api.auth.introspection import Introspector
from herd.api.auth.issuer import Issuer, SigningKeys
from herd.api.auth.middleware import Authenticator, access_control, add_rate_limit_headers
from herd.api.auth.ratelimit import Quotas
from herd.api.auth.tokens import JwksKeys, KeySource, Validator
from herd.api.telemetry.metrics import Metrics
from herd.config import Settings
from litestar.types import ASGIApp, BeforeMessageSendHookHandler
from redis.asyncio import Redis

log = logging.getLogger("herd.api.auth")


class Security:
    def __init__(self, settings: Settings, redis: Callable[[], Redis], metrics: Metrics | None = None) -> None:
        s = settings
        self.enabled = s.auth_enabled()
        self.issuer: Issuer | None = None
        self._http: httpx.AsyncClient | None = None
        self._oauth: AsyncOAuth2Client | None = None
        self.middleware: list[Callable[[ASGIApp], ASGIApp]] = []
        self.before_send: list[BeforeMessageSendHookHandler] = []
        overrides = s.limits_for()
        limits = bool(s.rate_limit_rpm or s.rate_limit_tpm or overrides)
        if not self.enabled:
            log.warning(
                "AUTHENTICATION IS OFF: every caller on %s:%d may use every route (set HERD_API_KEYS, an identity "
                "provider or HERD_AUTH_CLIENTS to turn it on; README, Auth)",
                s.host,
                s.port,
            )
        authenticator = self._authenticator(s, redis) if self.enabled else None
        if self.enabled or limits:
            quotas = Quotas(redis, metrics)
            self.middleware.append(
                access_control(authenticator, quotas, s.metrics_scope, (s.rate_limit_rpm, s.rate_limit_tpm), overrides)
            )
        if limits:
            self.before_send.append(add_rate_limit_headers)

    def _authenticator(self, s: Settings, redis: Callable[[], Redis]) -> Authenticator:
        keys = credentials.load(s.api_keys, s.api_keys_file, "HERD_API_KEYS")
        clients = credentials.load(s.auth_clients, s.auth_clients_file, "HERD_AUTH_CLIENTS")
        issuers: dict[str, KeySource] = {}
        external: JwksKeys | None = None
        if s.auth_jwks_url or s.auth_oidc_discovery_url:
            if s.auth_jwks_url and not s.auth_issuer:
                raise ValueError("HERD_AUTH_JWKS_URL needs HERD_AUTH_ISSUER (the exact `iss` of the tokens)")
            # No redirects: a JWKS is fetched from exactly the configured address (through HTTPS_PROXY and with
            # SSL_CERT_FILE when set, as a corporate IdP may need).
            self._http = httpx.AsyncClient(follow_redirects=False)
            external = JwksKeys(
                self._http, s.auth_jwks_url, s.auth_oidc_discovery_url, s.auth_jwks_ttl_s, s.auth_jwks_min_refresh_s
            )
            if s.auth_issuer:
                issuers[s.auth_issuer] = external
        if clients:
            url = (s.issuer_url or f"http://{s.host}:{s.port}").rstrip("/")
            keys_store = SigningKeys(redis, s.issuer_key_rotation_s, s.issuer_token_ttl_s)
            self.issuer = Issuer(url, s.auth_audience, s.issuer_token_ttl_s, clients, keys_store)
            issuers[url] = keys_store
        introspector = None
        if s.auth_introspection_url:
            if not s.auth_introspection_client_id:
                raise ValueError("HERD_AUTH_INTROSPECTION_URL needs HERD_AUTH_INTROSPECTION_CLIENT_ID (and its secret)")
            self._oauth = AsyncOAuth2Client(
                s.auth_introspection_client_id,
                s.auth_introspection_client_secret,
                token_endpoint_auth_method="client_secret_basic",
                follow_redirects=False,
                timeout=5.0,
            )
            introspector = Introspector(
                self._oauth,
                s.auth_introspection_url,
                s.auth_audience,
                s.auth_leeway_s,
                s.auth_introspection_cache_s,
                max(1, s.auth_introspection_cache_max),
            )
        if not (keys or clients or external or introspector):
            log.warning(
                "authentication is on but no API keys, identity provider or clients are configured: "
                "every request except the open routes will be refused"
            )
        validator = None
        if issuers or external is not None:
            algorithms = [a.strip() for a in s.auth_algorithms.split(",") if a.strip()]
            discovered = external if external is not None and not s.auth_issuer else None
            validator = Validator(issuers, discovered, s.auth_audience, algorithms, s.auth_leeway_s)
        log.info(
            "authentication on: %d API keys, %s, %s, %s",
            len(keys),
            "an identity provider" if external is not None else "no identity provider",
            "token introspection" if introspector is not None else "no token introspection",
            f"built-in issuer {self.issuer.url} with {len(clients)} clients" if self.issuer else "no built-in issuer",
        )
        return Authenticator(keys, validator, introspector)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._oauth is not None:
            await self._oauth.aclose()
