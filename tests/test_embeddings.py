"""/v1/embeddings with the official openai SDK: real pooled vectors from the real model, batched in the worker."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import llama_cpp
import numpy as np
import openai
import pytest

from tests.conftest import MODEL, HerdServer

SENTENCES = ["The cat sat on the mat.", "A kitten was sitting on the rug.", "Quarterly revenue grew by five percent."]


@pytest.fixture(scope="module")
def sdk(server: HerdServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def vectors(resp: object) -> np.ndarray:
    return np.array([d.embedding for d in resp.data])  # type: ignore[attr-defined]


def test_batch_equals_one_by_one_and_meaning_shows(sdk: openai.OpenAI) -> None:
    batch = sdk.embeddings.create(model=MODEL, input=SENTENCES)  # the SDK asks for base64 and decodes it
    assert [d.index for d in batch.data] == [0, 1, 2]
    together = vectors(batch)
    alone = np.vstack([vectors(sdk.embeddings.create(model=MODEL, input=s)) for s in SENTENCES])
    assert together.shape == (3, 576)
    np.testing.assert_allclose(together, alone, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    sims = together @ together.T
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[1, 2], sims


def test_usage_counts_real_tokens(sdk: openai.OpenAI, model_path: str) -> None:
    vocab = llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)
    resp = sdk.embeddings.create(model=MODEL, input=SENTENCES)
    expected = sum(len(vocab.tokenize(s.encode(), add_bos=True, special=True)) for s in SENTENCES)
    assert resp.usage.prompt_tokens == expected == resp.usage.total_tokens


def test_float_format_token_ids_and_dimensions(server: HerdServer, sdk: openai.OpenAI, model_path: str) -> None:
    vocab = llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)
    ids = vocab.tokenize(SENTENCES[0].encode(), add_bos=True, special=True)
    by_text = vectors(sdk.embeddings.create(model=MODEL, input=SENTENCES[0], encoding_format="float"))
    by_ids = vectors(sdk.embeddings.create(model=MODEL, input=[ids]))
    np.testing.assert_allclose(by_text, by_ids, atol=1e-4)
    raw = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": MODEL, "input": "hi"}, timeout=60).json()
    assert isinstance(raw["data"][0]["embedding"], list), "float is the default without encoding_format"
    short = vectors(sdk.embeddings.create(model=MODEL, input=SENTENCES[0], dimensions=64))
    assert short.shape == (1, 64)
    np.testing.assert_allclose(np.linalg.norm(short), 1.0, atol=1e-5)
    np.testing.assert_allclose(short[0] * np.linalg.norm(by_text[0, :64]), by_text[0, :64], atol=1e-4)


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": MODEL, "input": "hello " * 3000}, "input", "context_length_exceeded"),
        ({"model": MODEL, "input": ["a", 3]}, "input", None),
        ({"model": MODEL, "input": []}, "input", None),
        ({"model": MODEL, "input": "a", "dimensions": 5000}, "dimensions", None),
        ({"model": MODEL, "input": "a", "encoding_format": "hex"}, "encoding_format", None),
        ({"model": MODEL, "input": [[1, 2], [99999999]]}, "input[1]", None),
    ],
)
def test_bad_input_is_400(server: HerdServer, body: dict[str, object], param: str, code: str | None) -> None:
    resp = httpx.post(f"{server.base_url}/v1/embeddings", json=body, timeout=60)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param
    assert error["code"] == code


def test_unknown_model_is_404(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="nope", input="hi")
