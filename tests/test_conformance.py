"""Replies conform to the schemas clients hold: on /v1 the openai SDK's own types, validated strictly (pydantic strict
mode: a null where OpenAI's schema has a string fails), and herd's published OpenAPI document for every route."""

from __future__ import annotations

import json

import httpx
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from tests.conftest import MODEL, HerdServer

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0}
TEXT = {"model": MODEL, "prompt": "Once", "max_tokens": 4, "temperature": 0}


def strict(kind: type[BaseModel], data: object) -> BaseModel:
    return kind.model_validate(data, strict=True)


def sse_objects(text: str) -> list[dict[str, object]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def test_chat_completion_is_openai_strict(server: HerdServer) -> None:
    answer = httpx.post(f"{server.base_url}/v1/chat/completions", json=CHAT, timeout=60)
    assert answer.status_code == 200
    reply = strict(ChatCompletion, answer.json())
    assert isinstance(reply, ChatCompletion)
    assert isinstance(reply.system_fingerprint, str) and reply.system_fingerprint.startswith("fp_")


def test_chat_chunks_are_openai_strict(server: HerdServer) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    answer = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    chunks = [strict(ChatCompletionChunk, item) for item in sse_objects(answer.text)]
    assert len(chunks) >= 2
    prints = {c.system_fingerprint for c in chunks if isinstance(c, ChatCompletionChunk)}
    assert len(prints) == 1 and all(isinstance(p, str) for p in prints)


def test_completions_are_openai_strict(server: HerdServer) -> None:
    answer = httpx.post(f"{server.base_url}/v1/completions", json=TEXT, timeout=60)
    reply = strict(Completion, answer.json())
    assert isinstance(reply, Completion) and isinstance(reply.system_fingerprint, str)
    streamed = httpx.post(f"{server.base_url}/v1/completions", json={**TEXT, "stream": True}, timeout=60)
    items = sse_objects(streamed.text)
    # The SDK reuses Completion for stream chunks, whose finish_reason is null until the last (as OpenAI sends it):
    # the chunk that finishes is checked strictly, every chunk for its fingerprint.
    finishing = [item for item in items if any(c.get("finish_reason") for c in item["choices"])]  # type: ignore[union-attr]
    assert finishing and all(isinstance(strict(Completion, item), Completion) for item in finishing)
    assert all(isinstance(item["system_fingerprint"], str) for item in items)


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_are_openai_strict(server: HerdServer, encoding: str) -> None:
    body = {"model": MODEL, "input": ["a", "b"], "encoding_format": encoding}
    answer = httpx.post(f"{server.base_url}/v1/embeddings", json=body, timeout=60)
    assert answer.status_code == 200
    if encoding == "float":
        assert isinstance(strict(CreateEmbeddingResponse, answer.json()), CreateEmbeddingResponse)
    else:
        assert all(isinstance(item["embedding"], str) for item in answer.json()["data"])
