"""One batch line through the same path as an interactive request: decode the body into the endpoint's wire type,
translate, run on the workers (low priority), and build the response body the endpoint would have sent."""

from __future__ import annotations

import time

import msgspec

from api.errors import from_validation
from api.events import EventStream
from api.gateway import Gateway
from api.routes.common import close_shielded, collect
from api.translate import openai as translate
from shared.errors import InvalidRequest
from shared.wire import openai as wire


def _decode(body: bytes, type_: type[msgspec.Struct]) -> msgspec.Struct:
    try:
        return msgspec.json.decode(body, type=type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise from_validation(exc) from exc


async def run_line(gateway: Gateway, endpoint: str, body: bytes, request_id: str) -> bytes:
    """The JSON response body of a successful line; a failure raises its ServiceError (as the route would)."""
    created = int(time.time())
    streams: list[EventStream] = []
    try:
        if endpoint == "/v1/chat/completions":
            chat = _decode(body, wire.ChatCompletionRequest)
            assert isinstance(chat, wire.ChatCompletionRequest)
            _no_stream(chat.stream)
            req = translate.chat_request(chat, request_id)
            streams.append(await gateway.open(req, low_priority=True))
            text, end = await collect(streams[0])
            answer = translate.chat_completion(req.id, chat.model, created, text, end.finish_reason, end.usage)
            return msgspec.json.encode(answer)
        if endpoint == "/v1/completions":
            completion = _decode(body, wire.CompletionRequest)
            assert isinstance(completion, wire.CompletionRequest)
            _no_stream(completion.stream)
            reqs = translate.completion_requests(completion, request_id)
            for req in reqs:
                streams.append(await gateway.open(req, low_priority=True))
            results = [await collect(s) for s in streams]
            choices = [
                wire.CompletionChoice(index=i, text=text, finish_reason=end.finish_reason)
                for i, (text, end) in enumerate(results)
            ]
            usages = [end.usage for _, end in results]
            return msgspec.json.encode(translate.completion(reqs[0].id, completion.model, created, choices, usages))
        embedding = _decode(body, wire.EmbeddingCreateParams)
        assert isinstance(embedding, wire.EmbeddingCreateParams)
        emb_req = translate.embedding_request(embedding, request_id)
        streams.append(await gateway.open(emb_req, low_priority=True))
        result = await streams[0].embedded()
        return msgspec.json.encode(translate.embedding_response(embedding.model, result, embedding.encoding_format))
    finally:
        await close_shielded(*streams)  # a line cancelled mid-run still tells its worker to stop


def _no_stream(stream: bool | None) -> None:
    if stream:
        raise InvalidRequest("stream is not supported in a batch request", param="stream")
