"""One batch line through the same path as an interactive request: decode the body into the endpoint's wire type,
translate, run on the workers (low priority), and assemble the response body the endpoint would have sent."""

from __future__ import annotations

import time
from typing import TypeVar

import msgspec
from herd.api.events import EventStream
from herd.api.gateway import Gateway
from herd.api.grammar.schema import GrammarCache
from herd.api.relay import close_shielded, merged
from herd.api.translate import openai_replies, openai_requests
from herd.api.translate.openai_chat_replies import ChatAssembler
from herd.api.translate.openai_functions import uses_functions
from herd.api.translate.openai_text_replies import CompletionAssembler
from herd.api.translate.responses_replies import ResponseAssembler, initial
from herd.api.translate.responses_requests import generation_request, input_items, references
from herd.api.validation import decode_json
from herd.api.wire import openai as wire
from herd.api.wire import responses as responses_wire
from herd.errors import InvalidRequest
from herd.toolparams import signatures

T = TypeVar("T")


def _decode(body: bytes, type_: type[T]) -> T:
    return decode_json(body, type_)  # the same boundary as an interactive request's body


def _no_stream(stream: bool | None) -> None:
    if stream:
        raise InvalidRequest("stream is not supported in a batch request", param="stream")


async def run_line(gateway: Gateway, grammars: GrammarCache, endpoint: str, body: bytes, request_id: str) -> bytes:
    """The JSON response body of a successful line; a failure raises its ServiceError (as the route would)."""
    created = int(time.time())
    streams: list[EventStream] = []
    try:
        if endpoint == "/v1/chat/completions":
            chat_body = _decode(body, wire.ChatCompletionRequest)
            _no_stream(chat_body.stream)
            req = openai_requests.chat_request(chat_body, request_id, grammars)
            streams.append(await gateway.open(req, low_priority=True))
            tools = req.tool_constraint is not None
            logprobs, functions = bool(chat_body.logprobs), uses_functions(chat_body)
            typed = signatures((t.name, t.parameters) for t in req.tools)
            chat = ChatAssembler(req.id, chat_body.model, created, req.n, tools, logprobs, False, functions, typed)
            async for event in streams[0].deltas():
                chat.feed(event.index, event)
            return msgspec.json.encode(chat.completion())
        if endpoint == "/v1/completions":
            text_body = _decode(body, wire.CompletionRequest)
            _no_stream(text_body.stream)
            reqs = openai_requests.completion_requests(text_body, request_id)
            for one in reqs:
                streams.append(await gateway.open(one, low_priority=True))
            text = CompletionAssembler(
                reqs[0].id,
                text_body.model,
                created,
                [r.prompt or "" for r in reqs],
                reqs[0].n,
                text_body.logprobs is not None,
                bool(text_body.echo),
                False,
            )
            async for index, event in merged(streams):
                text.feed(index, event)
            return msgspec.json.encode(text.completion())
        if endpoint == "/v1/responses":
            return await _response(gateway, grammars, body, request_id, created, streams)
        embedding_body = _decode(body, wire.EmbeddingCreateParams)
        emb_req = openai_requests.embedding_request(embedding_body, request_id)
        streams.append(await gateway.open(emb_req, low_priority=True))
        result = await streams[0].embedded()
        answer = openai_replies.embedding_response(embedding_body.model, result, embedding_body.encoding_format)
        return msgspec.json.encode(answer)
    finally:
        await close_shielded(*streams)  # a line cancelled mid-run still tells its worker to stop


async def _response(
    gateway: Gateway, grammars: GrammarCache, body: bytes, request_id: str, created: int, streams: list[EventStream]
) -> bytes:
    """A Responses line: the Response object /v1/responses would answer. A line stands alone: it is not stored and
    cannot continue a stored conversation (no previous_response_id, no item_reference) nor run in the background."""
    response_body = _decode(body, responses_wire.ResponseCreateParams)
    _no_stream(response_body.stream)
    if response_body.previous_response_id:
        message = "previous_response_id is not supported in a batch request; send the earlier items as input"
        raise InvalidRequest(message, param="previous_response_id")
    if response_body.background:
        raise InvalidRequest("background is not supported in a batch request", param="background")
    if references(response_body):
        raise InvalidRequest("item_reference is not supported in a batch request; send the items", param="input")
    items = input_items(response_body, {}, request_id)
    req = generation_request(response_body, request_id, items, grammars)
    response = initial(response_body, f"resp_{request_id}", created, None)
    assembler = ResponseAssembler.for_request(response_body, response)
    streams.append(await gateway.open(req, low_priority=True))
    async for event in streams[0].deltas():
        assembler.feed(event)
    return msgspec.json.encode(assembler.response)
