"""Internal events of one /api/chat or /api/generate -> Ollama's NDJSON lines, or the one object of stream:false.

Tool calls go out whole, one line each, as Ollama sends them (arguments as a JSON object); logprobs ride on the
line their tokens' text is on.
"""

from __future__ import annotations

import json
import secrets
from typing import Literal

from herd.api.translate import ollama as translate
from herd.api.translate.logprobs import rows
from herd.api.translate.tools import CallEnd, Content, Piece, ToolCallParser
from herd.api.wire import ollama as wire
from herd.inference import Finished, TokenDelta, TokenLogprob

Reply = wire.ChatResponse | wire.GenerateResponse


def _logprobs(items: tuple[TokenLogprob, ...]) -> list[wire.Logprob]:
    return [wire.Logprob(*head, top_logprobs=[wire.TopLogprob(*alt) for alt in top]) for head, top in rows(items)]


class OllamaReply:
    def __init__(self, kind: Literal["chat", "generate"], model: str, tools: bool, logprobs: bool) -> None:
        self._kind = kind
        self._model = model
        self._parser = ToolCallParser() if tools else None
        self._want_logprobs = logprobs
        self._text: list[str] = []
        self._calls: list[wire.ToolCall] = []
        self._logprobs: list[wire.Logprob] = []

    def _line(self, text: str, logprobs: list[wire.Logprob] | None, calls: list[wire.ToolCall] | None = None) -> Reply:
        if self._kind == "generate":
            reply: Reply = translate.generate_chunk(self._model, text)
        else:
            reply = translate.chat_chunk(self._model, text)
            if calls:
                reply.message.tool_calls = calls
        if logprobs:
            reply.logprobs = logprobs
        return reply

    def _pieces(self, pieces: list[Piece], logprobs: list[wire.Logprob] | None) -> list[Reply]:
        lines = []
        for piece in pieces:
            if isinstance(piece, Content):
                self._text.append(piece.text)
                lines.append(self._line(piece.text, logprobs))
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
        if self._parser is None:
            pieces: list[Piece] = [Content(event.text)] if event.text else []
        else:
            pieces = self._parser.feed(event.text)
        lines = self._pieces(pieces, logprobs)
        if not lines and logprobs:
            lines = [self._line("", logprobs)]
        return lines

    def finish(self, end: Finished, total_ns: int) -> list[Reply]:
        """The last lines of a stream: text held back by the tool-call parser, then the done line."""
        lines = self._pieces(self._parser.finish(), None) if self._parser is not None else []
        return [*lines, self._done("", end, total_ns)]

    def whole(self, end: Finished, total_ns: int) -> Reply:
        """stream:false: everything in one object (call after feeding every event)."""
        if self._parser is not None:
            self._pieces(self._parser.finish(), None)
        reply = self._done("".join(self._text), end, total_ns)
        if isinstance(reply, wire.ChatResponse) and self._calls:
            reply.message.tool_calls = self._calls
        if self._want_logprobs:
            reply.logprobs = self._logprobs
        return reply

    def _done(self, text: str, end: Finished, total_ns: int) -> Reply:
        if self._kind == "generate":
            return translate.generate_done(self._model, text, end, total_ns)
        return translate.chat_done(self._model, text, end, total_ns)
