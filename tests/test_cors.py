"""CORS (api/edge/cors.py) on the Doorman's allow-list (HERD_ORIGINS plus loopback Origins), with auth on: preflights
answered without credentials, replies naming the Origin, Origins outside the list refused."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from herd.api.auth import credentials

from tests.conftest import MODEL, HerdServer

SECRET = "cors-test-secret-0123456789abcdef"


@pytest.fixture(scope="module")
def herd(redis_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdServer]:
    srv = HerdServer(
        redis_port,
        db=15,
        log_path=tmp_path_factory.mktemp("cors") / "serve.log",
        HERD_AUTH="on",
        HERD_API_KEYS=credentials.entry("page", SECRET, ["inference", "models:read"]),
        HERD_ORIGINS="https://chat.example.com, https://*.apps.example",
    )
    yield srv
    srv.stop()


def _preflight(herd: HerdServer, path: str, origin: str) -> httpx.Response:
    headers = {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type",
    }
    return httpx.options(f"{herd.base_url}{path}", headers=headers, timeout=30)


@pytest.mark.parametrize("origin", ["https://chat.example.com", "https://team.apps.example", "http://localhost:5173"])
def test_preflight_of_an_allowed_origin_is_answered_without_credentials(herd: HerdServer, origin: str) -> None:
    for path in ("/v1/chat/completions", "/v1/ui/chat", "/api/chat", "/v1/models"):
        reply = _preflight(herd, path, origin)
        assert reply.status_code == 204, (path, reply.text)
        assert reply.headers["access-control-allow-origin"] == origin
        assert reply.headers["access-control-allow-headers"] == "authorization,content-type"
        assert "POST" in reply.headers["access-control-allow-methods"]
        assert "Origin" in reply.headers["vary"]


def test_replies_name_the_origin_and_auth_still_applies(herd: HerdServer) -> None:
    origin = {"origin": "https://chat.example.com"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    url = f"{herd.base_url}/v1/chat/completions"
    refused = httpx.post(url, json=body, headers=origin, timeout=60)
    assert refused.status_code == 401  # the preflight opens no door: the request itself needs the key
    assert refused.headers["access-control-allow-origin"] == "https://chat.example.com"  # so the page can read why
    answered = httpx.post(url, json=body, headers={**origin, "authorization": f"Bearer {SECRET}"}, timeout=120)
    assert answered.status_code == 200 and answered.json()["choices"][0]["message"]["content"]
    assert answered.headers["access-control-allow-origin"] == "https://chat.example.com"
    assert "x-request-id" in answered.headers["access-control-expose-headers"]
    plain = httpx.get(f"{herd.base_url}/v1/models", headers={"authorization": f"Bearer {SECRET}"}, timeout=30)
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers  # no Origin, no CORS


def test_an_origin_outside_the_list_gets_nothing(herd: HerdServer) -> None:
    for origin in ("https://evil.example", "https://chat.example.com.evil.example", "http://chat.example.com"):
        reply = _preflight(herd, "/v1/chat/completions", origin)
        assert reply.status_code == 403 and "access-control-allow-origin" not in reply.headers
        assert reply.json()["error"]["code"] == "origin_not_allowed"
