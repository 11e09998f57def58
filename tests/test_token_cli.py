"""`herd token` (authlib's OAuth2 client, client-credentials grant) against herd's own built-in issuer: the token it
prints opens the API; a wrong secret is an OAuth error and exit status 1, with nothing printed on stdout."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from herd.api.auth.credentials import entry

from tests.conftest import HerdServer
from tests.test_redis_restart import PrivateRedis

SECRET = "sk-client-" + "7" * 30


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdServer]:
    redis_server = PrivateRedis(tmp_path_factory.mktemp("redis-token"))
    redis_server.start()
    env = {"HERD_AUTH_CLIENTS": entry("svc", SECRET, ["inference", "models:read"])}
    server = HerdServer(redis_server.port, db=0, log_path=tmp_path_factory.mktemp("token") / "serve.log", **env)
    yield server
    server.stop()
    redis_server.kill()


def herd_token(server: HerdServer, secret: str, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "herd", "token", "svc", "--url", f"{server.base_url}/oauth/token", "--stdin"]
    return subprocess.run([*command, *extra], input=secret + "\n", capture_output=True, text=True, timeout=60)


def test_the_printed_token_opens_the_api(issuer: HerdServer) -> None:
    assert httpx.get(f"{issuer.base_url}/v1/models", timeout=30).status_code == 401
    done = herd_token(issuer, SECRET, "--scope", "models:read")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.count(".") == 2  # a JWT
    answer = httpx.get(f"{issuer.base_url}/v1/models", headers={"authorization": f"Bearer {token}"}, timeout=30)
    assert answer.status_code == 200


def test_a_wrong_secret_is_invalid_client(issuer: HerdServer) -> None:
    done = herd_token(issuer, "sk-wrong")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "invalid_client" in done.stderr


def test_a_scope_the_client_lacks_is_invalid_scope(issuer: HerdServer) -> None:
    done = herd_token(issuer, SECRET, "--scope", "models:admin")
    assert done.returncode == 1 and "invalid_scope" in done.stderr
