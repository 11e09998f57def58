"""Wrong requests get OpenAI's status and error body, naming the field, before any 200; nothing is enqueued."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import MODEL, HerdServer

CHAT = "/v1/chat/completions"


def post(server: HerdServer, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", timeout=30, **kwargs)  # type: ignore[arg-type]


def error_of(resp: httpx.Response) -> dict[str, object]:
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers.get("x-request-id")
    body = resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


def queued_jobs(server: HerdServer) -> int:
    return server.redis.zcard(f"herd:queue:{MODEL}")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 3}, "temperature"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, "max_tokens"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": "hello"}, "messages"),
        ({"model": MODEL, "messages": [{"role": "user", "content": 123}]}, "messages[0].content"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 1000000000}, "n"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": MODEL, "messages": []}, "messages"),
    ],
)
def test_bad_field_is_400_naming_it(server: HerdServer, body: dict[str, object], param: str) -> None:
    before = queued_jobs(server)
    resp = post(server, CHAT, json=body)
    assert resp.status_code == 400, resp.text
    error = error_of(resp)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert queued_jobs(server) == before


def test_malformed_json_is_400(server: HerdServer) -> None:
    resp = post(server, CHAT, content=b'{"model": ', headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert "JSON" in str(error_of(resp)["message"])


def test_unknown_model_is_404_model_not_found(server: HerdServer) -> None:
    resp = post(server, CHAT, json={"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 404
    error = error_of(resp)
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    with sdk, pytest.raises(openai.NotFoundError):
        sdk.completions.create(model="gpt-9", prompt="hi")


@pytest.mark.parametrize("stream", [False, True])
def test_too_long_prompt_is_400_before_any_200(server: HerdServer, stream: bool) -> None:
    long_text = "hello " * 3000  # ~3000 tokens against a 2048-token context
    body = {"model": MODEL, "messages": [{"role": "user", "content": long_text}], "stream": stream}
    resp = post(server, CHAT, json=body)
    assert resp.status_code == 400
    error = error_of(resp)
    assert error["code"] == "context_length_exceeded"
    assert "2048" in str(error["message"]) and "tokens" in str(error["message"])


def test_prompt_plus_max_tokens_beyond_context_is_400(server: HerdServer) -> None:
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 5000}
    resp = post(server, "/v1/completions", json=body)
    assert resp.status_code == 400
    assert error_of(resp)["code"] == "context_length_exceeded"


def test_unknown_route_has_openai_error_body(server: HerdServer) -> None:
    resp = httpx.get(f"{server.base_url}/v1/nothing-here")
    assert resp.status_code == 404
    error_of(resp)


def test_unknown_fields_are_ignored(server: HerdServer) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "future_field": {"x": 1}}
    assert post(server, CHAT, json=body).status_code == 200
