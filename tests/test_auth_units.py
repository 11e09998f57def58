"""Pure pieces of auth: the route -> scope table, credential entries, the auth-off rule, rate-limit arithmetic, and
the token-bucket script against the real Redis."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import httpx
import pytest
import redis
from herd.api.auth import credentials
from herd.api.auth.access import CLOSED, OPEN, required
from herd.api.auth.principal import SCOPE_BATCH, SCOPE_INFERENCE, SCOPE_MODELS_ADMIN, SCOPE_MODELS_READ
from herd.api.auth.ratelimit import SCRIPT, Bucket, duration, estimate, headers
from herd.api.auth.security import Security
from herd.api.auth.tokens import JwksKeys
from herd.config import load_settings
from herd.errors import Unauthenticated, Unavailable
from herd.inference import ChatMessage, EmbeddingRequest, GenerationRequest
from joserfc.jwk import ECKey, KeySet


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/healthz", OPEN),
        ("GET", "/readyz", OPEN),
        ("GET", "/", OPEN),
        ("HEAD", "/", OPEN),
        ("GET", "/api/version", OPEN),
        ("GET", "/metrics", OPEN),
        ("POST", "/v1/chat/completions", SCOPE_INFERENCE),
        ("POST", "/v1/completions", SCOPE_INFERENCE),
        ("POST", "/v1/embeddings", SCOPE_INFERENCE),
        ("POST", "/api/chat", SCOPE_INFERENCE),
        ("POST", "/api/generate", SCOPE_INFERENCE),
        ("POST", "/api/embed", SCOPE_INFERENCE),
        ("POST", "/api/embeddings", SCOPE_INFERENCE),
        ("GET", "/v1/queue", SCOPE_INFERENCE),
        ("GET", "/v1/queue/abc", SCOPE_INFERENCE),
        ("GET", "/v1/models", SCOPE_MODELS_READ),
        ("GET", "/v1/models/smollm2:135m", SCOPE_MODELS_READ),
        ("GET", "/api/tags", SCOPE_MODELS_READ),
        ("POST", "/api/show", SCOPE_MODELS_READ),
        ("GET", "/api/ps", SCOPE_MODELS_READ),
        ("POST", "/v1/files", SCOPE_BATCH),
        ("GET", "/v1/files", SCOPE_BATCH),
        ("GET", "/v1/files/file-1/content", SCOPE_BATCH),
        ("DELETE", "/v1/files/file-1", SCOPE_BATCH),
        ("POST", "/v1/batches", SCOPE_BATCH),
        ("POST", "/v1/batches/batch_1/cancel", SCOPE_BATCH),
        ("POST", "/api/pull", SCOPE_MODELS_ADMIN),
        ("POST", "/api/create", SCOPE_MODELS_ADMIN),
        ("POST", "/api/copy", SCOPE_MODELS_ADMIN),
        ("DELETE", "/api/delete", SCOPE_MODELS_ADMIN),
        ("POST", "/api/push", SCOPE_MODELS_ADMIN),
        ("HEAD", "/api/blobs/sha256:00", SCOPE_MODELS_ADMIN),
        ("POST", "/api/blobs/sha256:00", SCOPE_MODELS_ADMIN),
        # Nobody listed these: closed, never open by default.
        ("GET", "/v1/something-new", CLOSED),
        ("POST", "/healthz", CLOSED),
        ("GET", "/api/pull", CLOSED),
        ("OPTIONS", "/v1/chat/completions", CLOSED),
        ("GET", "/v1/modelsX", CLOSED),
    ],
)
def test_route_scopes(method: str, path: str, scope: str) -> None:
    assert required(method, path) == scope


def test_metrics_can_require_a_scope() -> None:
    assert required("GET", "/metrics", metrics_scope="metrics") == "metrics"
    assert required("GET", "/healthz", metrics_scope="metrics") == OPEN


def test_credential_entries() -> None:
    secret = credentials.new_secret()
    line = credentials.entry("ci", secret, ["inference", "models:read"])
    assert secret not in line
    (cred,) = credentials.parse(f"# a comment\n{line}\n", "test")
    assert cred.name == "ci" and cred.digest == credentials.digest(secret)
    assert cred.scopes == {"inference", "models:read"}
    unnamed = credentials.parse(f"{credentials.digest('x')}:batch; {credentials.digest('y')}:", "test")
    assert unnamed[0].name == f"key-{credentials.digest('x')[:12]}" and unnamed[0].scopes == {"batch"}
    assert unnamed[1].scopes == frozenset()
    with pytest.raises(ValueError, match="HERD_API_KEYS") as refused:
        credentials.parse("sk-a-pasted-secret:inference", "HERD_API_KEYS")
    assert "sk-a-pasted-secret" not in str(refused.value)  # a pasted secret is not echoed


def test_key_command_prints_a_usable_entry() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "herd", "key", "ci", "--scopes", "inference"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    secret_line, entry = out.stdout.strip().splitlines()
    secret = secret_line.rsplit(" ", 1)[1]
    (cred,) = credentials.parse(entry, "test")
    assert cred.digest == credentials.digest(secret) and cred.scopes == {"inference"}
    hashed = subprocess.run(
        [sys.executable, "-m", "herd", "key", "ci", "--stdin"], input="abc\n", capture_output=True, text=True
    )
    assert hashed.stdout.strip() == credentials.entry("ci", "abc", ["inference", "models:read"])


def test_auth_is_off_only_on_loopback_or_by_setting() -> None:
    base = {"HERD_MODELS": "m=/x.gguf"}
    assert not load_settings(base).auth_enabled()  # loopback, nothing configured: off (the CLI warns)
    with pytest.raises(ValueError, match="HERD_AUTH=off"):
        load_settings({**base, "HERD_HOST": "0.0.0.0"}).auth_enabled()
    assert not load_settings({**base, "HERD_HOST": "0.0.0.0", "HERD_AUTH": "off"}).auth_enabled()
    assert load_settings({**base, "HERD_API_KEYS": f"{credentials.digest('k')}:inference"}).auth_enabled()
    assert load_settings({**base, "HERD_AUTH": "on"}).auth_enabled()


def test_api_refuses_to_start_open_on_a_network() -> None:
    env = {"HERD_MODELS": "m=/x.gguf", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "herd", "api", "--host", "0.0.0.0"], capture_output=True, text=True, env=env
    )
    assert out.returncode != 0 and "HERD_AUTH=off" in out.stderr


def test_rate_limit_overrides() -> None:
    settings = load_settings({"HERD_MODELS": "m=/x.gguf", "HERD_RATE_LIMITS": "key:a=10/2000; client:b=0/50"})
    assert settings.limits_for() == {"key:a": (10, 2000), "client:b": (0, 50)}
    with pytest.raises(ValueError, match="HERD_RATE_LIMITS"):
        load_settings({"HERD_MODELS": "m=/x.gguf", "HERD_RATE_LIMITS": "key:a=10"}).limits_for()


def test_rate_limit_arithmetic() -> None:
    assert [duration(s) for s in (0.02, 1, 59.2, 60, 361)] == ["20ms", "1s", "1m0s", "1m0s", "6m1s"]
    bucket = Bucket("requests", 60, 30.0)
    assert bucket.reset_s() == 30.0 and bucket.wait_s() == 0.0
    assert Bucket("tokens", 600, -100.0).wait_s() == pytest.approx(10.1)
    assert headers({"requests": Bucket("requests", 60, -3.5)}) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m4s",
    }
    chat = GenerationRequest(id="a", model="m", messages=(ChatMessage(role="user", content="x" * 400),), max_tokens=10)
    assert estimate(chat) == 101 + 10
    assert estimate(EmbeddingRequest(id="b", model="m", inputs=("abcd" * 10, (1, 2, 3)))) == 11 + 3


def test_bucket_script_on_redis(redis_port: int) -> None:
    r = redis.Redis(host="127.0.0.1", port=redis_port, db=8)
    key = "herd:ratelimit:test:unit"
    r.delete(key)
    try:
        # capacity 60/min, need 1, cost 1: sixty pass (a refill may add one), then refused without taking.
        results = [r.eval(SCRIPT, 1, key, "60", "1", "1") for _ in range(70)]
        taken = [res for res in results if res[0] == 1]
        assert 60 <= len(taken) < 70
        refused = results[-1]
        assert refused[0] == 0 and float(refused[1]) < 1
        # Settling with a negative cost (a refund) never exceeds the capacity.
        ok, level = r.eval(SCRIPT, 1, key, "60", "-1e18", "-1000")
        assert ok == 1 and float(level) == 60
    finally:
        r.delete(key)
        r.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Litestar's, about other routes' parameter styles
def test_every_route_of_the_app_is_in_the_scope_table() -> None:
    """A route someone adds without a rule would be closed to everyone: this names it instead."""
    from herd.api.app import create_app
    from litestar.routes import HTTPRoute

    clients = f"svc={credentials.digest('s')}:inference"
    app = create_app(load_settings({"HERD_MODELS": "m=/x.gguf", "HERD_AUTH_CLIENTS": clients}))
    unlisted = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        path = re.sub(r"\{[^}]*\}", "x", route.path)
        for method in route.methods - {"OPTIONS"}:
            if required(method, path) == CLOSED:
                unlisted.append(f"{method} {route.path}")
    assert not unlisted
    assert {r.path for r in app.routes} >= {"/oauth/token", "/.well-known/jwks.json", "/v1/chat/completions"}


class _FakeIdp:
    """A JWKS served through httpx.MockTransport: counts fetches, can go down."""

    def __init__(self) -> None:
        self.key = ECKey.generate_key("P-256", parameters={"kid": "a", "alg": "ES256", "use": "sig"})
        self.fetches = 0
        self.down = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        if self.down:
            return httpx.Response(503)
        return httpx.Response(200, json=KeySet([self.key]).as_dict(private=False))


async def test_jwks_cache_limits_refreshes_and_survives_an_outage() -> None:
    idp = _FakeIdp()
    async with httpx.AsyncClient(transport=httpx.MockTransport(idp.handle)) as http:
        keys = JwksKeys(http, "http://idp/jwks", "", ttl_s=3600, min_refresh_s=3600)
        assert (await keys.key("a")).kid == "a"
        for i in range(50):  # a spray of unknown kids: refused, and no fetch at all within the interval
            with pytest.raises(Unauthenticated):
                await keys.key(f"spray-{i}")
        assert idp.fetches == 1
        idp.down = True
        keys._attempted_at = float("-inf")  # the interval has passed: the next unknown kid may fetch (and fails)
        with pytest.raises(Unauthenticated):
            await keys.key("unknown")
        assert idp.fetches == 2
        assert (await keys.key("a")).kid == "a"  # the cached key still works while the IdP is down


async def test_jwks_cold_start_with_the_idp_down_is_503_not_401() -> None:
    idp = _FakeIdp()
    idp.down = True
    async with httpx.AsyncClient(transport=httpx.MockTransport(idp.handle)) as http:
        keys = JwksKeys(http, "http://idp/jwks", "", ttl_s=3600, min_refresh_s=3600)
        for _ in range(5):
            with pytest.raises(Unavailable):
                await keys.key("a")
        assert idp.fetches == 1


def test_auth_off_says_so_at_startup(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="herd.api.auth"):
        security = Security(load_settings({"HERD_MODELS": "m=/x.gguf"}), lambda: None)  # type: ignore[arg-type,return-value]
    assert not security.enabled and not security.middleware  # nothing on the hot path
    assert "AUTHENTICATION IS OFF" in caplog.text
