"""Opaque bearer tokens through RFC 7662 introspection, against a real server: a stand-in IdP on 127.0.0.1 serves an
introspection endpoint (HTTP Basic client authentication, form-encoded token, JSON answer) and counts its calls;
herd's own auth path asks it, caches the answers and turns them into principals or OpenAI-style 401s."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import httpx
import ollama
import openai
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client
from herd.api.auth.introspection import Introspector
from herd.errors import Unauthenticated, Unavailable
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import MODEL, HerdServer, free_port
from tests.test_auth import AUDIENCE, assert_refused, bearer, chat

CLIENT_ID, CLIENT_SECRET = "herd-rs", "rs-" + secrets.token_hex(8)


class IntrospectingIdp:
    """An authorization server's introspection endpoint: `tokens` maps a token to its answer; any other token is
    `{"active": false}`. Callers must authenticate as (CLIENT_ID, CLIENT_SECRET)."""

    def __init__(self) -> None:
        self.tokens: dict[str, dict[str, object]] = {}
        self.calls: Counter[str] = Counter()
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
                if self.path != "/introspect" or self.headers.get("Authorization") != expected:
                    self._answer(401, {"error": "invalid_client"})
                    return
                form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode())
                token = form.get("token", [""])[0]
                idp.calls[token] += 1
                self._answer(200, idp.tokens.get(token, {"active": False}))

            def _answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.url = f"http://127.0.0.1:{free_port()}/introspect"
        port = int(self.url.split(":")[2].split("/")[0])
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def issue(self, lifetime_s: float = 300, **fields: object) -> str:
        """A new opaque token the IdP calls active (fields override the answer's; None leaves one out)."""
        token = secrets.token_urlsafe(24).replace(".", "_")
        answer: dict[str, object] = {
            "active": True,
            "sub": "bob",
            "client_id": "bob-app",
            "scope": "inference models:read",
            "aud": [AUDIENCE, "another-api"],
            "exp": int(time.time() + lifetime_s),
            "token_type": "Bearer",
        }
        answer.update(fields)
        self.tokens[token] = {k: v for k, v in answer.items() if v is not None}
        return token


@pytest.fixture(scope="module")
def idp() -> Iterator[IntrospectingIdp]:
    provider = IntrospectingIdp()
    yield provider
    provider.httpd.shutdown()
    provider.httpd.server_close()


@pytest.fixture(scope="module")
def server(redis_port: int, idp: IntrospectingIdp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdServer]:
    srv = HerdServer(
        redis_port,
        db=12,
        log_path=tmp_path_factory.mktemp("introspection") / "serve.log",
        HERD_AUTH_INTROSPECTION_URL=idp.url,
        HERD_AUTH_INTROSPECTION_CLIENT_ID=CLIENT_ID,
        HERD_AUTH_INTROSPECTION_CLIENT_SECRET=CLIENT_SECRET,
        HERD_AUTH_INTROSPECTION_CACHE_S="60",
        HERD_AUTH_AUDIENCE=AUDIENCE,
    )
    yield srv
    srv.stop()


def test_active_token_works_end_to_end_and_is_introspected_once(server: HerdServer, idp: IntrospectingIdp) -> None:
    token = idp.issue()
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=token, max_retries=0) as client:
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
        reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=3)
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        assert [m.id for m in client.models.list()] == [MODEL]
    with ollama.Client(host=server.base_url, headers=bearer(token)) as olla:
        assert [m.model for m in olla.list().models] == [MODEL]
    assert idp.calls[token] == 1  # three requests, one introspection: the answer is cached
    # A token shaped like a JWT is introspected too when no JWKS is configured (some IdPs issue JWTs and also
    # answer introspection for them).
    dotted = "abc.def." + secrets.token_hex(8)
    idp.tokens[dotted] = {"active": True, "sub": "carol", "scope": "models:read", "exp": int(time.time()) + 60}
    assert httpx.get(f"{server.base_url}/v1/models", headers=bearer(dotted)).status_code == 200
    assert idp.calls[dotted] == 1


@pytest.mark.parametrize(
    "case",
    ["unknown", "inactive", "active-as-string", "expired", "wrong-audience", "no-subject", "oversized"],
)
def test_refused_tokens_are_openai_style_401s(server: HerdServer, idp: IntrospectingIdp, case: str) -> None:
    token = {
        "unknown": lambda: "never-issued-" + secrets.token_hex(8),
        "inactive": lambda: idp.issue(active=False),
        "active-as-string": lambda: idp.issue(active="true"),
        "expired": lambda: idp.issue(lifetime_s=-120),  # beyond the 30 s leeway
        "wrong-audience": lambda: idp.issue(aud="another-api"),
        "no-subject": lambda: idp.issue(sub=None, client_id=None),
        "oversized": lambda: "big-" + "x" * 9000,  # refused before any call to the IdP
    }[case]()
    before = server.redis.zcard(f"herd:queue:{MODEL}")
    assert_refused(chat(server, bearer(token)), 401, "invalid_token")
    assert_refused(chat(server, bearer(token)), 401, "invalid_token")
    assert idp.calls[token] == (0 if case == "oversized" else 1)  # the refusal is cached as well
    assert server.redis.zcard(f"herd:queue:{MODEL}") == before
    with (
        ollama.Client(host=server.base_url, headers=bearer(token)) as olla,
        pytest.raises(ollama.ResponseError) as refused,
    ):
        olla.list()
    assert refused.value.status_code == 401


def test_scopes_come_from_the_introspection_answer(server: HerdServer, idp: IntrospectingIdp) -> None:
    token = idp.issue(scope="models:read")
    assert httpx.get(f"{server.base_url}/v1/models", headers=bearer(token)).status_code == 200
    assert_refused(chat(server, bearer(token)), 403, "insufficient_scope")


def test_cache_lasts_the_token_lifetime_at_most(server: HerdServer, idp: IntrospectingIdp) -> None:
    short = idp.issue(lifetime_s=2)  # much shorter than HERD_AUTH_INTROSPECTION_CACHE_S (60 s)
    assert httpx.get(f"{server.base_url}/v1/models", headers=bearer(short)).status_code == 200
    time.sleep(2.5)  # past the token's exp (herd's 30 s leeway still accepts it), far from the cache bound
    assert httpx.get(f"{server.base_url}/v1/models", headers=bearer(short)).status_code == 200
    assert idp.calls[short] == 2  # the first answer was not used beyond the token's own exp


async def test_cache_is_bounded_follows_revocation_and_a_misconfigured_client_is_503(idp: IntrospectingIdp) -> None:
    async with AsyncOAuth2Client(CLIENT_ID, CLIENT_SECRET, token_endpoint_auth_method="client_secret_basic") as client:
        introspector = Introspector(client, idp.url, AUDIENCE, leeway_s=0, cache_s=300, cache_max=2)
        tokens = [idp.issue() for _ in range(4)]
        for token in tokens:
            principal, _ = await introspector.validate(token)
            assert principal.subject == "bob" and principal.via == "introspection"
        assert len(introspector._cache) == 2
        await introspector.validate(tokens[-1])  # the newest answers are the ones kept
        assert introspector.calls == 4
        await introspector.validate(tokens[0])  # the oldest was dropped: asked again
        assert introspector.calls == 5
        with pytest.raises(Unauthenticated):
            await introspector.validate("nothing-" + secrets.token_hex(4))
        shared = idp.issue()  # ten requests at once with one new token: one call, and each gets the principal
        answers = await asyncio.gather(*(introspector.validate(shared) for _ in range(10)))
        assert {principal.subject for principal, _ in answers} == {"bob"}
        assert idp.calls[shared] == 1
    async with AsyncOAuth2Client(CLIENT_ID, CLIENT_SECRET, token_endpoint_auth_method="client_secret_basic") as client:
        # A revocation at the IdP is seen once the cache bound (cache_s) has passed, however long the token lives.
        introspector = Introspector(client, idp.url, AUDIENCE, leeway_s=0, cache_s=1, cache_max=2)
        revoked = idp.issue(lifetime_s=3600)
        await introspector.validate(revoked)
        idp.tokens[revoked] = {"active": False}
        await introspector.validate(revoked)  # still the cached answer
        await asyncio.sleep(1.2)
        with pytest.raises(Unauthenticated):
            await introspector.validate(revoked)
        assert idp.calls[revoked] == 2
    async with AsyncOAuth2Client(CLIENT_ID, "wrong", token_endpoint_auth_method="client_secret_basic") as bad:
        introspector = Introspector(bad, idp.url, AUDIENCE, leeway_s=0, cache_s=300, cache_max=2)
        with pytest.raises(Unavailable):  # herd's own credentials are wrong: not the caller's fault
            await introspector.validate(idp.issue())
