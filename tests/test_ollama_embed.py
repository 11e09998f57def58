"""Ollama's /api/embed and legacy /api/embeddings with the official client: the same vectors as /v1/embeddings."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import ollama
import pytest

from tests.conftest import MODEL, HerdServer

TEXTS = ["The cat sat on the mat.", "A kitten was sitting on the rug.", "Quarterly revenue grew by five percent."]


@pytest.fixture(scope="module")
def client(server: HerdServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=server.base_url, timeout=120) as c:
        yield c


def test_embed_matches_openai_route_and_reports_counts(server: HerdServer, client: ollama.Client) -> None:
    resp = client.embed(model=MODEL, input=TEXTS)
    ours = np.array(resp.embeddings)
    assert ours.shape == (3, 576)
    openai_style = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": MODEL, "input": TEXTS}).json()
    np.testing.assert_allclose(ours, np.array([d["embedding"] for d in openai_style["data"]]), atol=1e-5)
    assert resp.prompt_eval_count == openai_style["usage"]["prompt_tokens"]
    assert resp.total_duration and resp.total_duration > 0
    assert resp.load_duration is not None and resp.load_duration >= 0
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_single_input_dimensions_and_legacy_route(client: ollama.Client) -> None:
    one = np.array(client.embed(model=MODEL, input=TEXTS[0]).embeddings)
    assert one.shape == (1, 576)
    short = np.array(client.embed(model=MODEL, input=TEXTS[0], dimensions=32).embeddings)
    assert short.shape == (1, 32)
    legacy = np.array(client.embeddings(model=MODEL, prompt=TEXTS[0]).embedding)
    np.testing.assert_allclose(legacy, one[0], atol=1e-5)


def test_truncate(server: HerdServer, client: ollama.Client) -> None:
    long_text = "word " * 3000  # beyond the 2048-token context
    cut = client.embed(model=MODEL, input=long_text)  # Ollama truncates by default
    assert cut.prompt_eval_count == 2048
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(model=MODEL, input=long_text, truncate=False)
    assert info.value.status_code == 400
    raw = httpx.post(f"{server.base_url}/api/embed", json={"model": MODEL, "input": long_text, "truncate": False})
    assert set(raw.json()) == {"error"}


def test_errors(server: HerdServer, client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(model="nope", input="hi")
    assert info.value.status_code == 404
    assert "not found" in str(info.value.error)
    empty = httpx.post(f"{server.base_url}/api/embed", json={"model": MODEL, "input": []})
    assert empty.status_code == 400 and "error" in empty.json()


def test_num_predict_beyond_the_context_generates_until_full(client: ollama.Client) -> None:
    # Ollama does not refuse a num_predict larger than the room left: it stops when the context is full.
    prompt = "word " * 1990
    resp = client.generate(model=MODEL, prompt=prompt, raw=True, options={"num_predict": 500, "temperature": 0})
    assert resp.done_reason == "length"
    assert resp.prompt_eval_count is not None and resp.eval_count is not None
    assert resp.prompt_eval_count + resp.eval_count == 2048
