"""OpenAI chat/completions requests -> GenerationRequest, and internal events -> OpenAI responses and chunks."""

from __future__ import annotations

import base64
import time

import numpy as np
from msgspec import UNSET

from shared.errors import InvalidRequest
from shared.inference import ChatMessage, Embedded, EmbeddingRequest, GenerationRequest, SamplingParams, Usage
from shared.wire import openai as wire


def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def _sampling(
    temperature: float | None,
    top_p: float | None,
    seed: int | None,
    presence_penalty: float | None,
    frequency_penalty: float | None,
) -> SamplingParams:
    # OpenAI's defaults: temperature 1, top_p 1. top_p 0 means "only the most likely token": greedy.
    temp = 1.0 if temperature is None else temperature
    if top_p == 0.0:
        temp, top_p = 0.0, 1.0
    return SamplingParams(
        temperature=temp,
        top_p=1.0 if top_p is None else top_p,
        seed=seed,
        presence_penalty=presence_penalty or 0.0,
        frequency_penalty=frequency_penalty or 0.0,
    )


def _n(n: int | None) -> None:
    if n is not None and n != 1:
        raise InvalidRequest("n > 1 is not supported yet; send n=1 or omit it", param="n")


def _content(message: wire.ChatCompletionMessageParam, index: int) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for j, part in enumerate(message.content):
        if part.type != "text" or part.text is None:
            raise InvalidRequest(
                f"content part type '{part.type}' is not supported by this model; send text parts",
                param=f"messages[{index}].content[{j}].type",
            )
        texts.append(part.text)
    return "".join(texts)


def chat_request(body: wire.ChatCompletionRequest, request_id: str) -> GenerationRequest:
    _n(body.n)
    messages = tuple(ChatMessage(role=m.role, content=_content(m, i), name=m.name) for i, m in enumerate(body.messages))
    return GenerationRequest(
        id=request_id,
        model=body.model,
        messages=messages,
        sampling=_sampling(body.temperature, body.top_p, body.seed, body.presence_penalty, body.frequency_penalty),
        max_tokens=body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens,
        stop=_stop(body.stop),
        enqueued_at=time.time(),
    )


def completion_requests(body: wire.CompletionRequest, request_id: str) -> list[GenerationRequest]:
    """One GenerationRequest per prompt (a list prompt gives one choice per entry)."""
    _n(body.n)
    for field in ("echo", "suffix", "best_of", "logprobs"):
        if getattr(body, field) not in (None, False, 1 if field == "best_of" else None):
            raise InvalidRequest(f"'{field}' is not supported yet", param=field)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    sampling = _sampling(body.temperature, body.top_p, body.seed, body.presence_penalty, body.frequency_penalty)
    return [
        GenerationRequest(
            id=request_id if i == 0 else f"{request_id}-{i}",
            model=body.model,
            prompt=prompt,
            sampling=sampling,
            max_tokens=16 if body.max_tokens is None else body.max_tokens,  # OpenAI's default for /v1/completions
            stop=_stop(body.stop),
            enqueued_at=time.time(),
        )
        for i, prompt in enumerate(prompts)
    ]


def usage(items: list[Usage]) -> wire.CompletionUsage:
    prompt = sum(u.prompt_tokens for u in items)
    completion = sum(u.completion_tokens for u in items)
    return wire.CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=wire.PromptTokensDetails(cached_tokens=sum(u.cached_tokens for u in items)),
    )


def chat_completion(
    request_id: str, model: str, created: int, text: str, finish_reason: str, used: Usage
) -> wire.ChatCompletion:
    return wire.ChatCompletion(
        id=f"chatcmpl-{request_id}",
        created=created,
        model=model,
        choices=[wire.Choice(index=0, message=wire.ChatCompletionMessage(content=text), finish_reason=finish_reason)],
        usage=usage([used]),
    )


def chat_chunk(
    request_id: str,
    model: str,
    created: int,
    delta: wire.ChoiceDelta,
    finish_reason: str | None = None,
    with_usage: bool = False,
) -> wire.ChatCompletionChunk:
    return wire.ChatCompletionChunk(
        id=f"chatcmpl-{request_id}",
        created=created,
        model=model,
        choices=[wire.ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)],
        usage=None if with_usage else UNSET,
    )


def chat_usage_chunk(request_id: str, model: str, created: int, used: Usage) -> wire.ChatCompletionChunk:
    return wire.ChatCompletionChunk(
        id=f"chatcmpl-{request_id}", created=created, model=model, choices=[], usage=usage([used])
    )


def completion(
    request_id: str, model: str, created: int, choices: list[wire.CompletionChoice], used: list[Usage]
) -> wire.Completion:
    return wire.Completion(id=f"cmpl-{request_id}", created=created, model=model, choices=choices, usage=usage(used))


def completion_chunk(
    request_id: str,
    model: str,
    created: int,
    choices: list[wire.CompletionChoice],
    with_usage: bool = False,
    used: list[Usage] | None = None,
) -> wire.Completion:
    return wire.Completion(
        id=f"cmpl-{request_id}",
        created=created,
        model=model,
        choices=choices,
        usage=usage(used) if used is not None else (None if with_usage else UNSET),
    )


def embedding_request(body: wire.EmbeddingCreateParams, request_id: str) -> EmbeddingRequest:
    raw = body.input
    inputs: list[str | tuple[int, ...]]
    if isinstance(raw, str):
        inputs = [raw]
    elif all(isinstance(item, int) for item in raw):
        inputs = [tuple(item for item in raw if isinstance(item, int))]  # one input given as token ids
    elif all(isinstance(item, str) for item in raw):
        inputs = [item for item in raw if isinstance(item, str)]
    elif all(isinstance(item, list) for item in raw):
        inputs = [tuple(item) for item in raw if isinstance(item, list)]
    else:
        raise InvalidRequest(
            "input must be a string, a list of strings, a list of token ids or a list of token-id lists",
            param="input",
        )
    return EmbeddingRequest(
        id=request_id,
        model=body.model,
        inputs=tuple(inputs),
        dimensions=body.dimensions,
        enqueued_at=time.time(),
    )


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
