"""Internal results -> the OpenAI objects endpoints share: usage (with herd's speculation extension), embeddings.

Chat chunks and completions are assembled in openai_chat_replies.py, legacy completions in openai_text_replies.py.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from importlib import metadata

import numpy as np
from herd.api.wire import openai as wire
from herd.inference import Embedded, Usage


def fingerprint(model: str) -> str:
    """`system_fingerprint`: OpenAI's schema has a string there (never null). It names the backend configuration a
    reply came from, so it changes when herd's version or the model does."""
    digest = hashlib.sha256(f"herd {_herd_version()} {model}".encode()).hexdigest()
    return f"fp_{digest[:10]}"


@functools.cache
def _herd_version() -> str:
    """Read once: importlib.metadata scans the installed distributions, ~1.7 ms, which every reply used to pay."""
    return metadata.version("herd")


def usage(items: list[Usage]) -> wire.CompletionUsage:
    prompt = sum(u.prompt_tokens for u in items)
    completion = sum(u.completion_tokens for u in items)
    return wire.CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=wire.PromptTokensDetails(cached_tokens=sum(u.cached_tokens for u in items)),
        speculation=speculation(items),
    )


def speculation(items: list[Usage]) -> wire.SpeculationUsage | None:
    """The extension field: drafted and accepted tokens over the choices, when any of them speculated."""
    if not any(u.speculative for u in items):
        return None
    return wire.SpeculationUsage(sum(u.drafted_tokens for u in items), sum(u.accepted_tokens for u in items))


def embedding_response(model: str, result: Embedded, encoding_format: str | None) -> wire.CreateEmbeddingResponse:
    vectors = np.frombuffer(result.vectors, dtype="<f4").reshape(-1, result.dimensions)
    data = [
        wire.Embedding(
            index=i,
            # base64: the little-endian float32 bytes, which both OpenAI SDKs ask for by default and decode.
            embedding=base64.b64encode(row.tobytes()).decode() if encoding_format == "base64" else row.tolist(),
        )
        for i, row in enumerate(vectors)
    ]
    usage = wire.EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
    return wire.CreateEmbeddingResponse(data=data, model=model, usage=usage)
