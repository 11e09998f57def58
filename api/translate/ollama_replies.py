"""Internal events and results -> Ollama's objects: the NDJSON lines of /api/chat and /api/generate (or the one
object of stream:false) and /api/embed's answer.

Tool calls go out whole, one line each, as Ollama sends them (arguments as a JSON object); logprobs ride on the
line their tokens' text is on.
A reasoning model's reasoning goes out as `thinking` (message.thinking in chat), unless the request said think=false.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from herd.api.translate.logprobs import rows
from herd.api.translate.reasoning import OutputParser, Reasoning
from herd.api.translate.tools import CallEnd, Content, Piece
from herd.api.wire import ollama as wire
from herd.inference import Embedded, Finished, TokenDelta, TokenLogprob
from herd.toolparams import Signature


def now() -> str:
    """RFC 3339 in UTC, as Ollama writes created_at."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _reason(end: Finished) -> wire.DoneReason:
    return "length" if end.finish_reason == "length" else "stop"


def chat_chunk(model: str, text: str) -> wire.ChatResponse:
    return wire.ChatResponse(model=model, created_at=now(), message=wire.Message("assistant", text), done=False)


def _final(end: Finished, total_ns: int) -> dict[str, Any]:
    """The fields Ollama puts on the last line of a chat and of a generate, from the worker's measurements."""
    u = end.usage
    final: dict[str, Any] = {
        "done": True,
        "done_reason": _reason(end),
        "total_duration": total_ns,
        "load_duration": u.queue_ns,
        "prompt_eval_count": u.prompt_tokens,
        "prompt_eval_duration": u.prompt_eval_ns,
        "eval_count": u.completion_tokens,
        "eval_duration": u.eval_ns,
    }
    if u.speculative:  # herd's extension: speculative decoding's drafted and accepted tokens
        final.update(draft_count=u.drafted_tokens, draft_accepted_count=u.accepted_tokens)
    return final


def chat_done(model: str, text: str, end: Finished, total_ns: int) -> wire.ChatResponse:
    message = wire.Message("assistant", text)
    return wire.ChatResponse(model=model, created_at=now(), message=message, **_final(end, total_ns))


def chat_loaded(model: str) -> wire.ChatResponse:
    return wire.ChatResponse(
        model=model, created_at=now(), message=wire.Message("assistant", ""), done=True, done_reason="load"
    )


def generate_chunk(model: str, text: str) -> wire.GenerateResponse:
    return wire.GenerateResponse(model=model, created_at=now(), response=text, done=False, context=[])


def generate_done(model: str, text: str, end: Finished, total_ns: int) -> wire.GenerateResponse:
    context = list(end.tokens)  # empty in raw mode, where the request did not ask for them
    return wire.GenerateResponse(model=model, created_at=now(), response=text, context=context, **_final(end, total_ns))


def generate_loaded(model: str) -> wire.GenerateResponse:
    return wire.GenerateResponse(model=model, created_at=now(), response="", done=True, context=[], done_reason="load")


def embed_response(model: str, result: Embedded, total_ns: int, queue_ns: int) -> wire.EmbedResponse:
    vectors = np.frombuffer(result.vectors, dtype="<f4").reshape(-1, result.dimensions)
    return wire.EmbedResponse(
        model=model,
        embeddings=vectors.tolist(),
        total_duration=total_ns,
        load_duration=queue_ns,
        prompt_eval_count=result.prompt_tokens,
    )


Reply = wire.ChatResponse | wire.GenerateResponse


def _logprobs(items: tuple[TokenLogprob, ...]) -> list[wire.Logprob]:
    return [wire.Logprob(*head, top_logprobs=[wire.TopLogprob(*alt) for alt in top]) for head, top in rows(items)]


class OllamaReply:
    def __init__(
        self,
        kind: Literal["chat", "generate"],
        model: str,
        tools: bool,
        logprobs: bool,
        thinking: bool = True,
        signatures: Mapping[str, Signature] | None = None,
    ) -> None:
        """`thinking`: the model's reasoning goes out as `thinking` (else it is dropped: think=false);
        `signatures`: the offered tools' parameter types (herd.toolparams), for calls that are not JSON."""
        self._kind = kind
        self._model = model
        self._parser = OutputParser(tools, thinking, signatures)
        self._want_logprobs = logprobs
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._calls: list[wire.ToolCall] = []
        self._logprobs: list[wire.Logprob] = []

    def _line(
        self,
        text: str,
        logprobs: list[wire.Logprob] | None,
        calls: list[wire.ToolCall] | None = None,
        thinking: str | None = None,
    ) -> Reply:
        if self._kind == "generate":
            line = generate_chunk(self._model, text)
            if thinking is not None:
                line.thinking = thinking
            reply: Reply = line
        else:
            reply = chat_chunk(self._model, text)
            if calls:
                reply.message.tool_calls = calls
            if thinking is not None:
                reply.message.thinking = thinking
        if logprobs:
            reply.logprobs = logprobs
        return reply

    def _pieces(self, pieces: list[Piece], logprobs: list[wire.Logprob] | None) -> list[Reply]:
        lines = []
        for piece in pieces:
            if isinstance(piece, Content):
                self._text.append(piece.text)
                lines.append(self._line(piece.text, logprobs))
            elif isinstance(piece, Reasoning):
                self._thinking.append(piece.text)
                lines.append(self._line("", logprobs, thinking=piece.text))
            elif isinstance(piece, CallEnd):
                try:
                    arguments = json.loads(piece.arguments)
                except ValueError:
                    arguments = {}
                function = wire.ToolCallFunction(name=piece.name, arguments=arguments, index=piece.index)
                call = wire.ToolCall(function=function, id=f"call_{secrets.token_hex(8)}")
                self._calls.append(call)
                lines.append(self._line("", logprobs, [call]))
            else:
                continue
            logprobs = None
        return lines

    def feed(self, event: TokenDelta) -> list[Reply]:
        logprobs = _logprobs(event.logprobs) if self._want_logprobs else None
        if logprobs:
            self._logprobs.extend(logprobs)
        lines = self._pieces(self._parser.feed(event), logprobs)
        if not lines and logprobs:
            lines = [self._line("", logprobs)]
        return lines

    def finish(self, end: Finished, total_ns: int) -> list[Reply]:
        """The last lines of a stream: text held back by the tool-call parser, then the done line."""
        lines = self._pieces(self._parser.finish(), None)
        return [*lines, self._done("", end, total_ns)]

    def whole(self, end: Finished, total_ns: int) -> Reply:
        """stream:false: everything in one object (call after feeding every event)."""
        self._pieces(self._parser.finish(), None)
        reply = self._done("".join(self._text), end, total_ns)
        if isinstance(reply, wire.ChatResponse) and self._calls:
            reply.message.tool_calls = self._calls
        if self._thinking:
            if isinstance(reply, wire.ChatResponse):
                reply.message.thinking = "".join(self._thinking)
            else:
                reply.thinking = "".join(self._thinking)
        if self._want_logprobs:
            reply.logprobs = self._logprobs
        return reply

    def _done(self, text: str, end: Finished, total_ns: int) -> Reply:
        if self._kind == "generate":
            return generate_done(self._model, text, end, total_ns)
        return chat_done(self._model, text, end, total_ns)
