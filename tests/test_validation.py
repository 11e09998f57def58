"""The validation boundary: no body, however deep or however large its numbers, gets a 500; each gets a 400 that
names the field (OpenAI's body on /v1, Ollama's on /api), batch lines included; a request the worker refuses
leaves nothing behind in Redis."""

from __future__ import annotations

import time

import httpx
import pytest
from herd.api.batches.validate import parse_input
from herd.api.validation import MAX_DEPTH, decode_json
from herd.api.wire import ollama, openai
from herd.errors import InvalidRequest

from tests.conftest import MODEL, HerdServer

DEEP = "[" * 100_000 + "]" * 100_000
HUGE = str(2**70)
USER = '"messages":[{"role":"user","content":"hi"}]'


def chat_with_schema(schema: str) -> str:
    fmt = f'{{"type":"json_schema","json_schema":{{"name":"x","schema":{{"type":"object","a":{schema}}}}}}}'
    return f'{{"model":"{MODEL}",{USER},"response_format":{fmt}}}'


# The seed corpus: (path, body, the param the 400 must name). test_fuzz.py replays it too.
NASTY: list[tuple[str, str, str | None]] = [
    ("/v1/chat/completions", chat_with_schema(DEEP), "response_format.json_schema.schema.a"),
    ("/v1/chat/completions", chat_with_schema("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)), None),
    ("/v1/chat/completions", f'{{"model":"{MODEL}",{USER},"max_tokens":{HUGE}}}', "max_tokens"),
    ("/v1/chat/completions", f'{{"model":"{MODEL}",{USER},"seed":-{HUGE}}}', "seed"),
    (
        "/v1/chat/completions",
        f'{{"model":"{MODEL}",{USER},"tools":[{{"function":{{"name":"f","parameters":{{"x":{DEEP}}}}}}}]}}',
        "tools[0].function.parameters.x",
    ),
    ("/v1/completions", f'{{"model":"{MODEL}","prompt":"a","max_tokens":{HUGE}}}', "max_tokens"),
    ("/v1/embeddings", f'{{"model":"{MODEL}","input":[1,{HUGE}]}}', "input[1]"),
    ("/v1/embeddings", f'{{"model":"{MODEL}","input":[[1],[2,-{HUGE}]]}}', "input[1][1]"),
    ("/v1/embeddings", f'{{"model":"{MODEL}","input":{DEEP}}}', "input[0][0]"),
    ("/api/chat", f'{{"model":"{MODEL}",{USER},"format":{{"x":{DEEP}}}}}', "format.x"),
    ("/api/generate", f'{{"model":"{MODEL}","prompt":"a","options":{{"num_predict":{HUGE}}}}}', "options.num_predict"),
    ("/api/generate", f'{{"model":"{MODEL}","prompt":"a","context":[{HUGE}]}}', "context[0]"),
    ("/api/embed", f'{{"model":"{MODEL}","input":{DEEP}}}', None),
    ("/v1/batches", f'{{"input_file_id":"file-x","endpoint":"/v1/embeddings","metadata":{DEEP[:20_000]}}}', "metadata"),
    ("/v1/responses", f'{{"model":"{MODEL}","input":"hi","max_output_tokens":{HUGE}}}', "max_output_tokens"),
    ("/v1/responses", f'{{"model":"{MODEL}","input":"hi","metadata":{{"x":{DEEP}}}}}', None),
    (
        "/v1/responses",
        f'{{"model":"{MODEL}","input":"hi","text":{{"format":{{"type":"json_schema","name":"x",'
        f'"schema":{{"a":{DEEP}}}}}}}}}',
        None,
    ),
]


@pytest.mark.parametrize(("path", "body", "param"), NASTY, ids=[f"{p}-{n}" for n, (p, _, _) in enumerate(NASTY)])
def test_decode_names_the_field(path: str, body: str, param: str | None) -> None:
    kinds = {
        "/v1/chat/completions": openai.ChatCompletionRequest,
        "/v1/completions": openai.CompletionRequest,
        "/v1/embeddings": openai.EmbeddingCreateParams,
        "/api/chat": ollama.ChatRequest,
        "/api/generate": ollama.GenerateRequest,
        "/api/embed": ollama.EmbedRequest,
    }
    if path not in kinds:
        return  # a route whose wire type lives elsewhere: covered against the server below
    with pytest.raises(InvalidRequest) as caught:
        decode_json(body.encode(), kinds[path])
    if param is not None:
        assert caught.value.param == param, caught.value.message


def test_bounds_hold_at_the_edges() -> None:
    ok = decode_json(f'{{"model":"m","input":[{2**63 - 1},{-(2**63)}]}}', openai.EmbeddingCreateParams)
    assert ok.input == [2**63 - 1, -(2**63)]
    nested = "[" * (MAX_DEPTH - 3) + "]" * (MAX_DEPTH - 3)  # root, response_format, json_schema, schema: 4 levels
    decode_json(chat_with_schema(nested[2:-2]), openai.ChatCompletionRequest)
    with pytest.raises(InvalidRequest):
        decode_json(f'{{"model":"m","input":[{2**63}]}}', openai.EmbeddingCreateParams)


def test_batch_lines_go_through_the_boundary() -> None:
    lines = [
        '{"custom_id":"a","method":"POST","url":"/v1/embeddings","body":{"model":"m","input":' + DEEP + "}}",
        '{"custom_id":"b","method":"POST","url":"/v1/embeddings","body":{"model":' + "[" * 70 + "]" * 70 + "}}",
        '{"custom_id":"c","method":"POST","url":"/v1/embeddings","body":{"model":"m","input":"fine"}}',
    ]
    accepted, errors, model = parse_input("\n".join(lines).encode(), "/v1/embeddings", {"m"}, 100)
    assert [line.custom_id for line in accepted] == ["c"]
    assert [(e.line, e.code) for e in errors] == [(1, "invalid_json_line"), (2, "invalid_body")]
    assert model == "m"


@pytest.mark.parametrize(("path", "body", "param"), NASTY, ids=[f"{p}-{n}" for n, (p, _, _) in enumerate(NASTY)])
def test_server_answers_400(server: HerdServer, path: str, body: str, param: str | None) -> None:
    answer = httpx.post(server.base_url + path, content=body, headers={"content-type": "application/json"}, timeout=60)
    assert answer.status_code == 400, answer.text[:300]
    if path.startswith("/api/"):
        assert set(answer.json()) == {"error"}  # Ollama's error body
        assert param is None or f"'{param}'" in answer.json()["error"]
    else:
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error"
        if param is not None:
            assert error["param"] == param


def test_token_ids_beyond_the_vocabulary_are_a_400(server: HerdServer) -> None:
    answer = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": MODEL, "input": [2**40]}, timeout=60)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "input"


def test_a_refused_prompt_leaves_no_record(server: HerdServer) -> None:
    """A prompt too long for the context is refused by the worker; its (large) request record must go with it."""
    before = set(server.redis.scan_iter(match="herd:request:*"))
    prompt = "hello " * 20_000
    answer = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": prompt}]},
        timeout=120,
    )
    assert answer.status_code == 400, answer.text[:300]
    assert answer.json()["error"]["code"] == "context_length_exceeded"
    deadline = time.monotonic() + 30
    left = set(server.redis.scan_iter(match="herd:request:*")) - before
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = set(server.redis.scan_iter(match="herd:request:*")) - before
    assert not left, f"request records left behind: {left}"


@pytest.mark.parametrize("path", ["/api/show", "/api/pull", "/v1/batches"])
def test_small_routes_take_small_bodies(server: HerdServer, path: str) -> None:
    """Control routes (a model name, ids) refuse a large body with 413; inference routes take it (up to the app's)."""
    padding = "x" * 200_000
    body = {"model": MODEL, "name": MODEL, "input_file_id": "file-x", "endpoint": "/v1/embeddings", "pad": padding}
    assert httpx.post(server.base_url + path, json=body, timeout=60).status_code == 413
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "pad": padding}
    assert httpx.post(f"{server.base_url}/v1/chat/completions", json=chat, timeout=120).status_code == 200
