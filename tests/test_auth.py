"""Auth against a real server: a test IdP on 127.0.0.1 (keys made here, JWKS and discovery served by a tiny HTTP
server) mints good and bad tokens; static API keys; the built-in issuer's client-credentials flow; scopes per
route; rate-limit headers and 429s; and neither a secret nor a prompt ever reaching the logs or the spans."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import ollama
import openai
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import MODEL, HerdServer, free_port
from tests.test_metrics import LINE, value
from tests.test_tracing import Collected, receiver  # noqa: F401  (the OTLP receiver fixture)

AUDIENCE = "herd-test"
ISSUER = "http://herd.test"
SECRET_SENTINEL = "SENTINELSECRET" + secrets.token_hex(4)
PROMPT_SENTINEL = "SENTINELPROMPT" + secrets.token_hex(4)
KEYS = {  # name -> (secret, scopes)
    "reader": (f"sk-reader-{SECRET_SENTINEL}", "models:read"),
    "infer": (f"sk-infer-{SECRET_SENTINEL}", "inference"),
    "limited": (f"sk-limited-{SECRET_SENTINEL}", "models:read,inference"),
    "tokens": (f"sk-tokens-{SECRET_SENTINEL}", "inference"),
    "prometheus": (f"sk-prom-{SECRET_SENTINEL}", "metrics"),
    "batch-a": (f"sk-batch-a-{SECRET_SENTINEL}", "batch"),
    "batch-b": (f"sk-batch-b-{SECRET_SENTINEL}", "batch"),
}
CLIENT_ID, CLIENT_SECRET = "svc", f"cs-{SECRET_SENTINEL}"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": f"Say hi. {PROMPT_SENTINEL}"}], "max_tokens": 4}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Idp:
    """A minimal OpenID provider: discovery document and JWKS, with a hit counter and an off switch."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256", "use": "sig"})
        self.published = [self.key]
        self.jwks_hits = 0
        self.down = False
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if idp.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": idp.issuer, "jwks_uri": f"{idp.issuer}/jwks.json"}
                elif self.path == "/jwks.json":
                    idp.jwks_hits += 1
                    body = KeySet(idp.published).as_dict(private=False)  # type: ignore[arg-type]
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def claims(self, **overrides: object) -> dict[str, object]:
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "alice",
            "client_id": "alice-app",  # RFC 9068 2.2: every JWT access token names its client
            "scope": "inference models:read",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": secrets.token_hex(8),  # every token distinct: the server's validation cache never answers for it
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, key: RSAKey | None = None, header: dict[str, object] | None = None, **claims: object) -> str:
        """An RFC 9068 access token (`typ` at+jwt); `header` entries override the header's (None: left out)."""
        key = key or self.key
        head = {"alg": "RS256", "typ": "at+jwt", "kid": key.kid, **(header or {})}
        head = {k: v for k, v in head.items() if v is not None}
        return jwt.encode(head, self.claims(**claims), key, algorithms=["RS256"])


@pytest.fixture(scope="module")
def idp() -> Iterator[Idp]:
    provider = Idp()
    yield provider
    provider.httpd.shutdown()
    provider.httpd.server_close()


def key_entries() -> str:
    return ";".join(f"{n}={hashlib.sha256(s.encode()).hexdigest()}:{sc}" for n, (s, sc) in KEYS.items())


@pytest.fixture(scope="module")
def auth_server(
    redis_port: int,
    idp: Idp,
    receiver: tuple[int, Collected],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[HerdServer]:
    port, _ = receiver
    srv = HerdServer(
        redis_port,
        db=7,
        log_path=tmp_path_factory.mktemp("auth") / "serve.log",
        **auth_env(idp),
        HERD_FILES_DIR=str(tmp_path_factory.mktemp("files")),
        HERD_LOG_LEVEL="debug",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    yield srv
    srv.stop()


def auth_env(idp: Idp) -> dict[str, str]:
    """The auth settings of the test server (and of a second API replica beside it)."""
    return {
        "HERD_AUTH_OIDC_DISCOVERY_URL": f"{idp.issuer}/.well-known/openid-configuration",
        "HERD_AUTH_AUDIENCE": AUDIENCE,
        "HERD_AUTH_JWKS_MIN_REFRESH_S": "2",
        "HERD_AUTH_JWKS_TTL_S": "2",
        "HERD_API_KEYS": key_entries(),
        "HERD_AUTH_CLIENTS": f"{CLIENT_ID}={hashlib.sha256(CLIENT_SECRET.encode()).hexdigest()}:inference,models:read",
        "HERD_ISSUER_URL": ISSUER,  # every replica names itself the same
        "HERD_ISSUER_KEY_ROTATION_S": "4",
        "HERD_RATE_LIMIT_RPM": "1000",
        "HERD_RATE_LIMIT_TPM": "1000000",
        "HERD_RATE_LIMITS": "key:limited=4/1000000;key:tokens=1000/100",
        "HERD_METRICS_SCOPE": "metrics",
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def scrape(server: HerdServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics as the scraper with the `metrics` scope sees it (HERD_METRICS_SCOPE protects it here)."""
    resp = httpx.get(f"{server.base_url}/metrics", headers=bearer(KEYS["prometheus"][0]))
    assert resp.status_code == 200
    samples = {}
    for line in resp.text.splitlines():
        match = LINE.match(line)
        if match and not line.startswith("#"):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
            samples[(match["name"], labels)] = float(match["value"])
    return samples


def chat(server: HerdServer, headers: dict[str, str], body: dict[str, object] | None = None) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body or CHAT, headers=headers, timeout=60)


def assert_refused(resp: httpx.Response, status: int, error: str | None) -> None:
    assert resp.status_code == status, resp.text
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    if error is None:
        assert "error=" not in challenge
    else:
        assert f'error="{error}"' in challenge
    body = resp.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["code"] == ("invalid_api_key" if status == 401 else "insufficient_scope")


# --- every bad credential is refused with the right status ---------------------------------------------------------


def _alg_none(idp: Idp) -> str:
    return f"{b64(json.dumps({'alg': 'none', 'kid': 'k1'}).encode())}.{b64(json.dumps(idp.claims()).encode())}."


def _hs256_with_public_key(idp: Idp) -> str:
    """Key confusion: an HMAC "signature" keyed with the RSA public key, which anyone can fetch."""
    public_pem = idp.key.as_pem(private=False)
    signing_input = (
        f"{b64(json.dumps({'alg': 'HS256', 'kid': 'k1'}).encode())}.{b64(json.dumps(idp.claims()).encode())}"
    )
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def _crit_header(idp: Idp) -> str:
    """A critical header parameter herd does not know, signed properly (by hand: joserfc refuses to make one)."""
    header = {"alg": "RS256", "kid": "k1", "crit": ["x-herd-unknown"], "x-herd-unknown": 1}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(idp.claims()).encode())}"
    signature = idp.key.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
    return f"{signing_input}.{b64(signature)}"


def _embedded_jwk(idp: Idp) -> str:
    """A token carrying its own (attacker's) key in the header, with the IdP's kid."""
    attacker = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    return idp.token(attacker, header={"jwk": attacker.as_dict(private=False)})


BAD_TOKENS = {
    "garbage": lambda idp: "garbage",
    "garbage-jwt": lambda idp: "abc.def.ghi",
    "expired": lambda idp: idp.token(exp=int(time.time()) - 120),  # beyond the 30 s leeway
    "not-yet-valid": lambda idp: idp.token(nbf=int(time.time()) + 120),
    "issued-in-the-future": lambda idp: idp.token(iat=int(time.time()) + 600),
    "wrong-issuer": lambda idp: idp.token(iss="http://127.0.0.1:1/evil"),
    "wrong-audience": lambda idp: idp.token(aud="someone-else"),
    "no-exp": lambda idp: idp.token(exp=None),
    "no-sub": lambda idp: idp.token(sub=None),
    # RFC 9068: only JWTs typed as access tokens, carrying the claims the profile requires. An ID token or any other
    # JWT the IdP signs (typ JWT, or none) is not a credential for herd.
    "typ-jwt": lambda idp: idp.token(header={"typ": "JWT"}),
    "typ-id-token": lambda idp: idp.token(header={"typ": "id_token+jwt"}),
    "no-typ": lambda idp: idp.token(header={"typ": None}),
    "no-client-id": lambda idp: idp.token(client_id=None),
    "no-jti": lambda idp: idp.token(jti=None),
    "no-iat": lambda idp: idp.token(iat=None),
    "wrong-signature": lambda idp: idp.token(RSAKey.generate_key(2048, parameters={"kid": "k1"})),
    "tampered": lambda idp: (lambda t: t[:-6] + ("AAAAAA" if not t.endswith("AAAAAA") else "BBBBBB"))(idp.token()),
    "alg-none": _alg_none,
    "hs256-with-public-key": _hs256_with_public_key,
    "unknown-kid": lambda idp: idp.token(RSAKey.generate_key(2048, parameters={"kid": "k-unknown"})),
    "embedded-jwk": _embedded_jwk,
    "crit-header": _crit_header,
    "wrong-api-key": lambda idp: f"sk-nope-{SECRET_SENTINEL}",
    "oversized": lambda idp: idp.token(padding="x" * 9000),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_bad_credentials_are_401(auth_server: HerdServer, idp: Idp, case: str) -> None:
    before = auth_server.redis.zcard(f"herd:queue:{MODEL}")
    resp = chat(auth_server, bearer(BAD_TOKENS[case](idp)))
    assert_refused(resp, 401, "invalid_token")
    assert auth_server.redis.zcard(f"herd:queue:{MODEL}") == before


def test_missing_credentials_are_401_without_error(auth_server: HerdServer) -> None:
    assert_refused(chat(auth_server, {}), 401, None)
    # Ollama's routes answer in Ollama's shape.
    resp = httpx.post(f"{auth_server.base_url}/api/chat", json={"model": MODEL, "messages": []})
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == 'Bearer realm="herd"'
    assert set(resp.json()) == {"error"}


def test_insufficient_scope_is_403(auth_server: HerdServer, idp: Idp) -> None:
    resp = chat(auth_server, bearer(idp.token(scope="models:read")))
    assert_refused(resp, 403, "insufficient_scope")
    assert 'scope="inference"' in resp.headers["www-authenticate"]
    reader, _ = KEYS["reader"]
    assert_refused(chat(auth_server, bearer(reader)), 403, "insufficient_scope")
    infer, _ = KEYS["infer"]
    resp = httpx.get(f"{auth_server.base_url}/api/tags", headers=bearer(infer))
    assert resp.status_code == 403
    assert 'error="insufficient_scope"' in resp.headers["www-authenticate"]
    assert set(resp.json()) == {"error"}


def test_open_routes_and_closed_unknown_paths(auth_server: HerdServer) -> None:
    base = auth_server.base_url
    for path in ("/healthz", "/readyz", "/", "/api/version", "/.well-known/jwks.json"):
        assert httpx.get(f"{base}{path}").status_code == 200, path
    assert httpx.head(f"{base}/").status_code == 200
    # /metrics is protected here (HERD_METRICS_SCOPE=metrics): the scraper's key opens it, no other does.
    assert_refused(httpx.get(f"{base}/metrics"), 401, None)
    assert_refused(httpx.get(f"{base}/metrics", headers=bearer(KEYS["infer"][0])), 403, "insufficient_scope")
    assert ("herd_model_workers", frozenset({("model", MODEL)})) in scrape(auth_server)
    for method, path in (
        ("GET", "/v1/models"),
        ("GET", "/v1/queue"),
        ("GET", "/no/such/route"),
        ("POST", "/api/pull"),
        ("GET", "/v1/files"),
    ):
        resp = httpx.request(method, f"{base}{path}")
        assert resp.status_code == 401, (method, path)
        assert resp.headers["www-authenticate"] == 'Bearer realm="herd"'


# --- good credentials through the real clients --------------------------------------------------------------------


def test_good_jwt_through_the_openai_sdk_and_the_ollama_client(auth_server: HerdServer, idp: Idp) -> None:
    token = idp.token()
    # RFC 9068's media-type spelling of the same `typ` is an access token too.
    assert chat(auth_server, bearer(idp.token(header={"typ": "application/at+jwt"}))).status_code == 200
    with openai.OpenAI(base_url=f"{auth_server.base_url}/v1", api_key=token, max_retries=0) as client:
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
        reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        assert [m.id for m in client.models.list()] == [MODEL]
    # `scp` as an array (as some IdPs send scopes) works as well as `scope`.
    scp = bearer(idp.token(scope=None, scp=["models:read"]))
    with ollama.Client(host=auth_server.base_url, headers=scp) as olla:
        assert [m.model for m in olla.list().models] == [MODEL]
    with ollama.Client(host=auth_server.base_url, headers=bearer(token)) as olla:
        assert olla.generate(model=MODEL, prompt="Hi", options={"num_predict": 3}).done
    with (
        ollama.Client(host=auth_server.base_url, headers=bearer("nope")) as olla,
        pytest.raises(ollama.ResponseError) as refused,
    ):
        olla.list()
    assert refused.value.status_code == 401


def test_api_key_through_the_openai_sdk(auth_server: HerdServer) -> None:
    infer, _ = KEYS["infer"]
    with openai.OpenAI(base_url=f"{auth_server.base_url}/v1", api_key=infer, max_retries=0) as client:
        reply = client.completions.create(model=MODEL, prompt="One, two,", max_tokens=3)
        assert reply.choices[0].text is not None
        with pytest.raises(openai.PermissionDeniedError):
            client.models.list()  # this key holds only `inference`
    with (
        openai.OpenAI(base_url=f"{auth_server.base_url}/v1", api_key="sk-wrong", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.models.list()


def test_jwks_kid_spray_rotation_and_idp_outage(auth_server: HerdServer, idp: Idp) -> None:
    assert chat(auth_server, bearer(idp.token())).status_code == 200  # the keys are cached now
    hits, started = idp.jwks_hits, time.monotonic()
    sprayed = 60
    for _ in range(sprayed):
        resp = chat(auth_server, bearer(idp.token(header={"kid": secrets.token_hex(6)})))
        assert resp.status_code == 401
    elapsed = time.monotonic() - started
    fetches = idp.jwks_hits - hits
    # At most one fetch per 2 s refresh interval (plus the one allowed at the start), not one per unknown kid.
    assert fetches <= elapsed / 2 + 1, (fetches, elapsed)
    assert fetches < sprayed

    # Rotation: the IdP publishes a new key; after the refresh interval a token signed with it is accepted.
    new = RSAKey.generate_key(2048, parameters={"kid": "k2", "alg": "RS256", "use": "sig"})
    idp.published = [idp.key, new]
    time.sleep(2.5)
    assert chat(auth_server, bearer(idp.token(new))).status_code == 200

    # Outage: the IdP answers 503; the cached keys keep validating (fresh tokens, so no cached validation).
    idp.down = True
    try:
        time.sleep(2.5)  # past the JWKS TTL: the server tries to refresh, fails, keeps its keys
        assert chat(auth_server, bearer(idp.token())).status_code == 200
        assert chat(auth_server, bearer(idp.token(new))).status_code == 200
    finally:
        idp.down = False


def test_files_belong_to_the_principal_that_uploaded_them(auth_server: HerdServer) -> None:
    """The auth middleware's principal is what the Files API owns objects by: another key sees nothing."""
    line = {"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": MODEL}}
    base = f"{auth_server.base_url}/v1"
    with (
        openai.OpenAI(base_url=base, api_key=KEYS["batch-a"][0], max_retries=0) as owner,
        openai.OpenAI(base_url=base, api_key=KEYS["batch-b"][0], max_retries=0) as other,
        openai.OpenAI(base_url=base, api_key=KEYS["infer"][0], max_retries=0) as no_batch,
    ):
        uploaded = owner.files.create(file=("in.jsonl", json.dumps(line).encode() + b"\n"), purpose="batch")
        assert owner.files.retrieve(uploaded.id).id == uploaded.id
        with pytest.raises(openai.NotFoundError):
            other.files.retrieve(uploaded.id)
        with pytest.raises(openai.NotFoundError):
            other.files.delete(uploaded.id)
        assert uploaded.id not in [f.id for f in other.files.list()]
        assert uploaded.id in [f.id for f in owner.files.list()]
        with pytest.raises(openai.PermissionDeniedError):
            no_batch.files.list()
        assert owner.files.delete(uploaded.id).deleted


# --- the built-in issuer ------------------------------------------------------------------------------------------


def test_builtin_issuer_client_credentials_end_to_end(auth_server: HerdServer) -> None:
    base = auth_server.base_url
    meta = httpx.get(f"{base}/.well-known/openid-configuration").json()
    assert meta["token_endpoint"] == f"{meta['issuer']}/oauth/token"
    assert "client_credentials" in meta["grant_types_supported"]
    # client_secret_basic, as most OAuth libraries send it
    resp = httpx.post(f"{base}/oauth/token", data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET))
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    grant = resp.json()
    assert grant["token_type"] == "Bearer" and grant["expires_in"] > 0
    assert set(grant["scope"].split()) == {"inference", "models:read"}
    # The token is a JWT signed with a key the JWKS endpoint publishes, checkable by anyone.
    jwks = KeySet.import_key_set(httpx.get(f"{base}/.well-known/jwks.json").json())
    decoded = jwt.decode(grant["access_token"], jwks, algorithms=["ES256"])
    claims = decoded.claims
    assert decoded.header["typ"] == "at+jwt"  # RFC 9068: herd's own tokens pass herd's own access-token check
    assert {"client_id", "iat", "jti"} <= set(claims)
    assert claims["iss"] == meta["issuer"] and claims["aud"] == AUDIENCE and claims["sub"] == f"client:{CLIENT_ID}"
    assert not any("d" in key for key in httpx.get(f"{base}/.well-known/jwks.json").json()["keys"])  # no private part
    with openai.OpenAI(base_url=f"{base}/v1", api_key=grant["access_token"], max_retries=0) as client:
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
        reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=3)
        assert reply.choices[0].message.content is not None

    # client_secret_post, asking for less than the client may have: the token holds only that.
    resp = httpx.post(
        f"{base}/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scope": "models:read",
        },
    )
    narrow = resp.json()["access_token"]
    assert resp.json()["scope"] == "models:read"
    assert httpx.get(f"{base}/v1/models", headers=bearer(narrow)).status_code == 200
    assert_refused(chat(auth_server, bearer(narrow)), 403, "insufficient_scope")


def client_token(base_url: str, **form: str) -> str:
    data = {"grant_type": "client_credentials", **form}
    resp = httpx.post(f"{base_url}/oauth/token", data=data, auth=(CLIENT_ID, CLIENT_SECRET))
    assert resp.status_code == 200, resp.text
    return str(resp.json()["access_token"])


def kid_of(token: str) -> str:
    return str(json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "==="))["kid"])


def test_issuer_keys_rotate_and_are_shared_by_replicas(
    auth_server: HerdServer, idp: Idp, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = auth_server.base_url
    first = client_token(base)
    second = first
    for _ in range(40):  # the key rotates every 4 s here
        if kid_of(second) != kid_of(first):
            break
        time.sleep(0.5)
        second = client_token(base)
    assert kid_of(second) != kid_of(first)
    published = {k["kid"] for k in httpx.get(f"{base}/.well-known/jwks.json").json()["keys"]}
    assert {kid_of(first), kid_of(second)} <= published  # the old key stays until its tokens expire
    for token in (first, second):
        assert httpx.get(f"{base}/v1/models", headers=bearer(token)).status_code == 200

    # A second API replica on the same Redis signs with the same current key and accepts the first one's tokens.
    port = free_port()
    log = (tmp_path_factory.mktemp("replica") / "herd.api.log").open("wb")
    env = {**os.environ, **auth_env(idp), "HERD_REDIS_URL": auth_server.redis_url}
    replica = subprocess.Popen(
        [sys.executable, "-m", "herd", "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        other = f"http://127.0.0.1:{port}"
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{other}/healthz").status_code == 200:
                    break
            time.sleep(0.2)
        for token in (first, second):
            assert httpx.get(f"{other}/v1/models", headers=bearer(token)).status_code == 200
        minted = client_token(other)
        assert kid_of(minted) in {k["kid"] for k in httpx.get(f"{base}/.well-known/jwks.json").json()["keys"]}
        assert httpx.get(f"{base}/v1/models", headers=bearer(minted)).status_code == 200
    finally:
        replica.terminate()
        replica.wait(timeout=30)
        log.close()


@pytest.mark.parametrize(
    ("data", "auth", "status", "error"),
    [
        ({"grant_type": "client_credentials"}, (CLIENT_ID, "wrong"), 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, ("nobody", CLIENT_SECRET), 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, None, 401, "invalid_client"),
        ({"grant_type": "password"}, (CLIENT_ID, CLIENT_SECRET), 400, "unsupported_grant_type"),
        (
            {"grant_type": "client_credentials", "scope": "models:admin"},
            (CLIENT_ID, CLIENT_SECRET),
            400,
            "invalid_scope",
        ),
    ],
)
def test_token_endpoint_refusals(
    auth_server: HerdServer, data: dict[str, str], auth: tuple[str, str] | None, status: int, error: str
) -> None:
    resp = httpx.post(f"{auth_server.base_url}/oauth/token", data=data, auth=auth)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == error
    assert "access_token" not in resp.json()


# --- rate limits --------------------------------------------------------------------------------------------------


def test_request_rate_limit_headers_and_429(auth_server: HerdServer) -> None:
    limited, _ = KEYS["limited"]
    before = scrape(auth_server)
    remaining = []
    for _ in range(12):
        resp = httpx.get(f"{auth_server.base_url}/v1/models", headers=bearer(limited))
        if resp.status_code == 429:
            break
        assert resp.status_code == 200
        assert resp.headers["x-ratelimit-limit-requests"] == "4"
        assert re.fullmatch(r"\d+(ms|s)|\d+m\d+s", resp.headers["x-ratelimit-reset-requests"])
        assert resp.headers["x-ratelimit-limit-tokens"] == "1000000"
        remaining.append(int(resp.headers["x-ratelimit-remaining-requests"]))
    assert resp.status_code == 429, remaining
    assert remaining == sorted(remaining, reverse=True) and remaining[0] == 3
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    error = resp.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "requests" in error["message"]
    # The openai SDK sees a RateLimitError (no retries here, to see the 429 itself).
    with (
        openai.OpenAI(base_url=f"{auth_server.base_url}/v1", api_key=limited, max_retries=0) as client,
        pytest.raises(openai.RateLimitError),
    ):
        client.models.list()
    # Other principals have their own budgets.
    infer, _ = KEYS["infer"]
    assert chat(auth_server, bearer(infer)).status_code == 200
    after = scrape(auth_server)
    assert (
        value(after, "herd_rate_limited_total", limit="requests")
        - value(before, "herd_rate_limited_total", limit="requests")
        == 2
    )


def test_token_rate_limit_counts_real_usage(auth_server: HerdServer) -> None:
    """A 100 tokens/min budget: one request with a long prompt uses more than all of it (settled with the real
    usage), so the next one is refused on tokens; the budget is per principal and shared by both protocols."""
    tokens_key, _ = KEYS["tokens"]
    long_prompt = "Count the words: " + " ".join(["apple"] * 300)
    first = chat(
        auth_server,
        bearer(tokens_key),
        {**CHAT, "messages": [{"role": "user", "content": long_prompt}], "max_tokens": 1},
    )
    assert first.status_code == 200, first.text
    assert first.json()["usage"]["prompt_tokens"] > 200
    assert first.headers["x-ratelimit-limit-tokens"] == "100"
    resp = chat(auth_server, bearer(tokens_key))
    assert resp.status_code == 429, resp.text
    assert resp.headers["x-ratelimit-remaining-tokens"] == "0"
    assert "tokens" in resp.json()["error"]["message"]
    assert int(resp.headers["retry-after"]) >= 1
    with (
        ollama.Client(host=auth_server.base_url, headers=bearer(tokens_key)) as olla,
        pytest.raises(ollama.ResponseError) as refused,
    ):
        olla.generate(model=MODEL, prompt="Hi", options={"num_predict": 2})
    assert refused.value.status_code == 429


def test_latency_histograms_follow_a_streamed_generation(auth_server: HerdServer) -> None:
    infer, _ = KEYS["infer"]
    before = scrape(auth_server)
    with httpx.stream(
        "POST",
        f"{auth_server.base_url}/v1/completions",
        json={"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "stream": True},
        headers=bearer(infer),
        timeout=60,
    ) as resp:
        chunks = [line for line in resp.iter_lines() if line.startswith("data: {")]
    after = scrape(auth_server)

    def delta(name: str) -> float:
        return value(after, name, model=MODEL) - value(before, name, model=MODEL)

    assert delta("herd_queue_wait_seconds_count") == 1
    assert delta("herd_time_to_first_token_seconds_count") == 1
    # Every generated token after the first has its gap recorded (the chunks carry one token each, or more).
    assert 1 <= delta("herd_inter_token_latency_seconds_count") <= 7
    assert len(chunks) >= 2


# --- what must never leak -----------------------------------------------------------------------------------------


def test_no_secret_or_prompt_in_logs_or_spans(
    auth_server: HerdServer,
    idp: Idp,
    receiver: tuple[int, Collected],  # noqa: F811
) -> None:
    _, collected = receiver
    infer, _ = KEYS["infer"]
    token = idp.token()
    trace_id = secrets.token_hex(16)
    headers = {**bearer(infer), "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    assert chat(auth_server, headers).status_code == 200
    assert chat(auth_server, bearer(token)).status_code == 200
    refused = chat(
        auth_server,
        {**bearer(f"sk-bad-{SECRET_SENTINEL}"), "traceparent": f"00-{trace_id[::-1]}-{secrets.token_hex(8)}-01"},
    )
    assert refused.status_code == 401
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not collected.of_trace(trace_id[::-1]):
        time.sleep(0.2)
    time.sleep(1.0)  # the worker's spans and log lines of these requests
    log = auth_server.log_path.read_text()
    with collected.lock:
        spans = repr(collected.spans)
    assert collected.of_trace(trace_id), "the traced request's spans arrived"
    for sentinel in (SECRET_SENTINEL, PROMPT_SENTINEL, token, token.split(".")[2], CLIENT_SECRET):
        assert sentinel not in log
        assert sentinel not in spans
    # Logs are JSON lines; the refusal's line names its request id and trace id (and not the key).
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert lines
    refusal = [entry for entry in lines if entry["message"].startswith("refused POST /v1/chat/completions")]
    assert any(
        entry.get("request_id") == refused.headers["x-request-id"] and entry.get("trace_id") == trace_id[::-1]
        for entry in refusal
    ), refusal
